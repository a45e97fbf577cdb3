/* lb_agent.dataplane._http1_native: the common upstream response head at C speed (an
 * optional build; lb_agent/dataplane/http1.py runs its pure-Python parser without it).
 *
 * parse_head(data, line_end, end) -> (status, headers, chunked, length, close) | None
 *     ``data[:end + 4]`` is a response head: ``line_end`` is the index of its first CRLF,
 *     ``end`` that of its first CRLF CRLF. Returns what ResponseParser's Python path would
 *     make of it: the status, the (lower-case name, value stripped of spaces and tabs) field
 *     pairs, and the framing facts (a ``Transfer-Encoding: chunked``; the Content-Length, -1
 *     when none; whether the connection closes after the response) -- but only for the
 *     common case this function knows by heart: a final (>= 200) status, every field line
 *     valid, at most one Transfer-Encoding (exactly ``chunked``, on HTTP/1.1) and at most one
 *     Content-Length (1 to 18 digits), not both, and Connection values that are exactly
 *     ``close`` or ``keep-alive`` (any case). For anything else (an interim response, any
 *     invalid or unusual line or value) it returns None and the caller runs the Python path,
 *     which decides, and words any error: so the two paths cannot differ in what they accept
 *     (tests/test_http1_native.py compares them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 tchar. */
static unsigned char TOKEN[256];

static void init_token(void) {
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++) TOKEN[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) TOKEN[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) TOKEN[c] = 1;
    for (const char *p = extra; *p; p++) TOKEN[(unsigned char)*p] = 1;
}

static int eq_nocase(const char *a, Py_ssize_t n, const char *lower) {
    if ((Py_ssize_t)strlen(lower) != n) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if (c != lower[i]) return 0;
    }
    return 1;
}

static PyObject *parse_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse_head(data: bytes, line_end: int, end: int)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    const char *buf = PyBytes_AS_STRING(args[0]);
    Py_ssize_t line_end = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if ((line_end == -1 || end == -1) && PyErr_Occurred()) return NULL;
    if (line_end < 0 || end < line_end || end + 4 > n) Py_RETURN_NONE;

    /* Status line: HTTP/1.[01] SP [1-9][0-9][0-9] (SP reason without NUL, CR, LF)? */
    if (line_end < 12 || memcmp(buf, "HTTP/1.", 7) != 0) Py_RETURN_NONE;
    int http11;
    if (buf[7] == '1') http11 = 1;
    else if (buf[7] == '0') http11 = 0;
    else Py_RETURN_NONE;
    if (buf[8] != ' ' || buf[9] < '1' || buf[9] > '9' || buf[10] < '0' || buf[10] > '9'
        || buf[11] < '0' || buf[11] > '9') Py_RETURN_NONE;
    int status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    if (status < 200) Py_RETURN_NONE; /* interim responses: the Python path */
    if (line_end > 12) {
        if (buf[12] != ' ') Py_RETURN_NONE;
        for (Py_ssize_t i = 13; i < line_end; i++) {
            char c = buf[i];
            if (c == '\0' || c == '\r' || c == '\n') Py_RETURN_NONE;
        }
    }

    PyObject *headers = PyList_New(0);
    if (headers == NULL) return NULL;
    int seen_te = 0, seen_cl = 0, close = !http11;
    long long length = -1;
    Py_ssize_t p = line_end + 2, stop = end + 2; /* the field lines, each ending CRLF */
    if (line_end == end) p = stop;
    while (p < stop) {
        Py_ssize_t name = p;
        while (p < stop && TOKEN[(unsigned char)buf[p]]) p++;
        if (p == name || p >= stop || buf[p] != ':') goto unusual;
        Py_ssize_t name_len = p - name;
        p++;
        Py_ssize_t value = p;
        while (p < stop) {
            char c = buf[p];
            if (c == '\r') break;
            if (c == '\0' || c == '\n') goto unusual;
            p++;
        }
        /* The scan stopped at a CR before ``stop`` (buf[end] is one); end + 4 <= n. */
        if (p >= stop || buf[p + 1] != '\n') goto unusual;
        Py_ssize_t value_end = p;
        p += 2;
        while (value < value_end && (buf[value] == ' ' || buf[value] == '\t')) value++;
        while (value_end > value && (buf[value_end - 1] == ' ' || buf[value_end - 1] == '\t'))
            value_end--;
        const char *v = buf + value;
        Py_ssize_t vlen = value_end - value;

        PyObject *k = PyBytes_FromStringAndSize(buf + name, name_len);
        if (k == NULL) goto error;
        char *kp = PyBytes_AS_STRING(k);
        for (Py_ssize_t i = 0; i < name_len; i++)
            if (kp[i] >= 'A' && kp[i] <= 'Z') kp[i] = (char)(kp[i] + 32);
        PyObject *val = PyBytes_FromStringAndSize(v, vlen);
        if (val == NULL) { Py_DECREF(k); goto error; }
        PyObject *pair = PyTuple_Pack(2, k, val);
        Py_DECREF(k);
        Py_DECREF(val);
        if (pair == NULL) goto error;
        int rc = PyList_Append(headers, pair);
        Py_DECREF(pair);
        if (rc < 0) goto error;

        if (name_len == 17 && memcmp(kp, "transfer-encoding", 17) == 0) {
            if (seen_te || !http11 || !eq_nocase(v, vlen, "chunked")) goto unusual;
            seen_te = 1;
        } else if (name_len == 14 && memcmp(kp, "content-length", 14) == 0) {
            if (seen_cl || vlen < 1 || vlen > 18) goto unusual;
            long long x = 0;
            for (Py_ssize_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9') goto unusual;
                x = x * 10 + (v[i] - '0');
            }
            seen_cl = 1;
            length = x;
        } else if (name_len == 10 && memcmp(kp, "connection", 10) == 0) {
            if (eq_nocase(v, vlen, "close")) close = 1;
            else if (eq_nocase(v, vlen, "keep-alive")) { if (!http11) close = 0; }
            else goto unusual;
        }
    }
    if (seen_te && seen_cl) goto unusual;
    PyObject *out = Py_BuildValue("(iNOLO)", status, headers, seen_te ? Py_True : Py_False,
                                  length, close ? Py_True : Py_False);
    return out;

unusual:
    Py_DECREF(headers);
    Py_RETURN_NONE;
error:
    Py_DECREF(headers);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "The common response head: (status, headers, chunked, length, close), or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_http1_native",
    "The common upstream response head at C speed (lb_agent.dataplane.http1).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__http1_native(void) {
    init_token();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "VERSION", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
