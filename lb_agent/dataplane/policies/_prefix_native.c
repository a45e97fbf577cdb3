/* lb_agent.dataplane.policies._prefix_native: prefix_aware's per-request work at C speed (an optional build).
 *
 * Functions with exactly the contracts of their pure-Python versions in
 * lb_agent/dataplane/policies/prefix_aware.py, which run where this module was not built:
 *
 * block_hashes(data, block, seed) -> list[int]
 *     One chained hash (60 bits of 64) per whole block of ``block`` bytes of ``data`` (data
 *     shorter than a block is one block): equal lists up to ``k`` mean equal first
 *     ``k * block`` bytes, up to hash collisions. Each block's value is the previous one's mixed with the
 *     block's bytes (xxHash64's round and avalanche, one lane). ``seed`` is drawn per process,
 *     as Python's own bytes hash is, so a client cannot aim crafted prompts at one value.
 *     The values differ from the Python version's; a process uses one of the two.
 *
 * prompt_key(body, keys, limit, block, seed, anchor_blocks, key_type)
 *     PrefixAwarePolicy.request_key in one call: None unless ``body`` is a JSON object
 *     (after ASCII whitespace) holding one of ``keys`` (tried in order); else a ``key_type``
 *     (PromptKey: a list subclass, made without calling its __init__) holding
 *     block_hashes(prompt_span(body, limit), block, seed), with ``charge`` -1 and ``anchor``
 *     zlib.crc32 of the span's first ``anchor_blocks * block`` bytes when it has at least
 *     ``anchor_blocks`` (> 0) blocks, else None.
 *
 * scan(candidates, key, young, old, bits, balance_abs, balance_rel, per, randrange,
 *      anchor, credit, rid_hashes, owed_per)
 *     PrefixAwarePolicy._scan: each candidate's matched depth (walking down from the deepest
 *     block, then up for the others, since what a replica holds is prefix-closed); the
 *     favoured candidate when ``anchor`` is an int (not None): the heaviest rendezvous weight
 *     (lb_agent/dataplane/rendezvous.py: splitmix64's finalizer of anchor ^ the replica's
 *     value in ``rid_hashes``) within the balance bound; then the lowest in-flight count plus
 *     ``owed`` (the candidate's owed prefill blocks) times ``owed_per``, minus depth / per (for
 *     the favoured one, at least ``credit`` less) within the bound, ties
 *     broken by the rendezvous weight when anchored, else by reservoir sampling with the
 *     same ``randrange`` calls as the Python version, so a seeded policy makes the same
 *     choices either way.
 *     Returns None when no candidate holds any block of ``key`` and none is favoured,
 *     (index of the chosen candidate, its depth, whether its deepest block is young, the
 *     deepest depth found), or NotImplemented when a mask does not fit 64 bits (more than 64
 *     live replicas) or a candidate has no value in ``rid_hashes``: the caller then runs the
 *     Python version.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_CANDIDATES 64
#define VALUE_MASK ((1ULL << 60) - 1)

static const uint64_t P1 = 0x9E3779B185EBCA87ULL;
static const uint64_t P2 = 0xC2B2AE3D27D4EB4FULL;
static const uint64_t P3 = 0x165667B19E3779F9ULL;
static const uint64_t P5 = 0x27D4EB2F165667C5ULL;

static PyObject *str_in_flight;
static PyObject *str_replica_id;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t avalanche(uint64_t h) {
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

static uint64_t mix_block(uint64_t acc, const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        acc += w * P2;
        acc = rotl64(acc, 31) * P1;
    }
    for (; i < n; i++) {
        acc ^= (uint64_t)p[i] * P5;
        acc = rotl64(acc, 11) * P1;
    }
    return avalanche(acc ^ (uint64_t)n);
}

/* The chained hashes of data[0:n] (see block_hashes), as a list of Python ints. */
static PyObject *hash_blocks(const unsigned char *data, Py_ssize_t n, Py_ssize_t block,
                             uint64_t seed) {
    Py_ssize_t count = n >= block ? n / block : (n > 0 ? 1 : 0);
    Py_ssize_t size = n >= block ? block : n;
    PyObject *out = PyList_New(count);
    if (out == NULL) {
        return NULL;
    }
    uint64_t h = seed ^ P5;
    for (Py_ssize_t k = 0; k < count; k++) {
        h = mix_block(h, data + k * size, size);
        /* 60 bits: two 30-bit digits, so a remembered block's int is as small as CPython's
         * own hash values (the chain itself keeps all 64). */
        PyObject *value = PyLong_FromUnsignedLongLong(h & VALUE_MASK);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, value);
    }
    return out;
}

static PyObject *block_hashes(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t block;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "y*nK:block_hashes", &view, &block, &seed)) {
        return NULL;
    }
    PyObject *out = NULL;
    if (block < 1) {
        PyErr_SetString(PyExc_ValueError, "block must be at least 1");
    } else {
        out = hash_blocks((const unsigned char *)view.buf, view.len, block, seed);
    }
    PyBuffer_Release(&view);
    return out;
}

/* bytes.lstrip()'s whitespace. */
static inline int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Where the prompt starts in ``body`` (see prompt_span): 1 and *at, *len set; 0 when there is
 * none; -1 with an exception set on bad ``keys``. */
static int find_span(PyObject *body, PyObject *keys, Py_ssize_t limit, const unsigned char **at,
                     Py_ssize_t *len) {
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(body);
    Py_ssize_t n = PyBytes_GET_SIZE(body);
    Py_ssize_t i = 0;
    while (i < n && is_space(data[i])) {
        i++;
    }
    if (i == n || data[i] != '{') {
        return 0;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(keys); k++) {
        PyObject *key = PyTuple_GET_ITEM(keys, k);
        if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) == 0) {
            PyErr_SetString(PyExc_TypeError, "keys must be non-empty bytes");
            return -1;
        }
        const unsigned char *found = memmem(data, (size_t)n, PyBytes_AS_STRING(key),
                                            (size_t)PyBytes_GET_SIZE(key));
        if (found != NULL) {
            Py_ssize_t start = found - data;
            *at = found;
            *len = n - start < limit ? n - start : limit;
            return 1;
        }
    }
    return 0;
}

/* zlib's CRC-32 (what Python's zlib.crc32 computes), the rendezvous anchor: eight bytes a
 * step ("slicing by 8"), then byte by byte. */
static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = c & 1 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        }
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++) {
            uint32_t prev = crc_table[t - 1][i];
            crc_table[t][i] = (prev >> 8) ^ crc_table[0][prev & 0xFF];
        }
    }
}

static uint32_t crc32_of(const unsigned char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFU;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint32_t lo = c ^ ((uint32_t)p[i] | (uint32_t)p[i + 1] << 8 |
                           (uint32_t)p[i + 2] << 16 | (uint32_t)p[i + 3] << 24);
        uint32_t hi = (uint32_t)p[i + 4] | (uint32_t)p[i + 5] << 8 |
                      (uint32_t)p[i + 6] << 16 | (uint32_t)p[i + 7] << 24;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
            crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
            crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
    }
    for (; i < n; i++) {
        c = crc_table[0][(c ^ p[i]) & 0xFF] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFU;
}

/* Argument conversions of the METH_FASTCALL functions below: PyArg_ParseTuple's "n", "d"
 * and "O!" (its format parsing cost about a tenth of prefix_aware's instructions per
 * request through the agent; bench/proxy_cost_bench.py --case chat). 0 on success, -1 with
 * PyArg_ParseTuple's exception set. */
static int arg_ssize(PyObject *obj, Py_ssize_t *out) {
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    *out = PyLong_AsSsize_t(index);
    Py_DECREF(index);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static int arg_double(PyObject *obj, double *out) {
    *out = PyFloat_Check(obj) ? PyFloat_AS_DOUBLE(obj) : PyFloat_AsDouble(obj);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static int arg_type(const char *fn, int pos, PyObject *obj, PyTypeObject *type) {
    if (PyObject_TypeCheck(obj, type)) {
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s() argument %d must be %s, not %.50s", fn, pos,
                 type->tp_name, Py_TYPE(obj)->tp_name);
    return -1;
}

static int arg_count(const char *fn, Py_ssize_t nargs, Py_ssize_t want) {
    if (nargs == want) {
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", fn, want,
                 nargs);
    return -1;
}

static PyObject *str_anchor;
static PyObject *str_charge;
static PyObject *str_owed;
static PyObject *minus_one;
static PyObject *empty_tuple;

static PyObject *prompt_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    PyObject *body, *keys, *key_type;
    Py_ssize_t limit, block, anchor_blocks;
    unsigned long long seed;
    if (arg_count("prompt_key", nargs, 7) < 0) {
        return NULL;
    }
    body = args[0];
    keys = args[1];
    key_type = args[6];
    if (arg_type("prompt_key", 1, body, &PyBytes_Type) < 0 ||
        arg_type("prompt_key", 2, keys, &PyTuple_Type) < 0 ||
        arg_ssize(args[2], &limit) < 0 || arg_ssize(args[3], &block) < 0) {
        return NULL;
    }
    if (!PyLong_Check(args[4])) {  /* "K": an int, taken modulo 2**64 */
        PyErr_Format(PyExc_TypeError, "prompt_key() argument 5 must be int, not %.50s",
                     Py_TYPE(args[4])->tp_name);
        return NULL;
    }
    seed = PyLong_AsUnsignedLongLongMask(args[4]);
    if ((seed == (unsigned long long)-1 && PyErr_Occurred()) ||
        arg_ssize(args[5], &anchor_blocks) < 0 ||
        arg_type("prompt_key", 7, key_type, &PyType_Type) < 0) {
        return NULL;
    }
    if (block < 1 || limit < 1) {
        PyErr_SetString(PyExc_ValueError, "block and limit must be at least 1");
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)key_type, &PyList_Type)) {
        PyErr_SetString(PyExc_TypeError, "key_type must be a list subclass");
        return NULL;
    }
    const unsigned char *at;
    Py_ssize_t len;
    int found = find_span(body, keys, limit, &at, &len);
    if (found < 0) {
        return NULL;
    }
    if (!found) {
        Py_RETURN_NONE;
    }
    PyObject *hashes = hash_blocks(at, len, block, seed);
    if (hashes == NULL) {
        return NULL;
    }
    /* The key_type instance (list.__new__, no __init__) holding the hashes, its anchor (None
     * for a prompt shorter than anchor_blocks) and charge -1 (not routed yet). */
    PyTypeObject *type = (PyTypeObject *)key_type;
    PyObject *out = type->tp_new(type, empty_tuple, NULL);
    PyObject *anchor = NULL;
    if (anchor_blocks < 1 || PyList_GET_SIZE(hashes) < anchor_blocks) {
        anchor = Py_NewRef(Py_None);
    } else {
        Py_ssize_t anchor_len = anchor_blocks * block < len ? anchor_blocks * block : len;
        anchor = PyLong_FromUnsignedLong(crc32_of(at, anchor_len));
    }
    if (out == NULL || anchor == NULL || PyList_SetSlice(out, 0, 0, hashes) < 0 ||
        PyObject_SetAttr(out, str_anchor, anchor) < 0 ||
        PyObject_SetAttr(out, str_charge, minus_one) < 0) {
        Py_XDECREF(out);
        out = NULL;
    }
    Py_XDECREF(anchor);
    Py_DECREF(hashes);
    return out;
}

/* A mask object (a Python int, or NULL for none) as 64 bits; -1 when it does not fit. */
static int mask_of(PyObject *obj, uint64_t *out) {
    if (obj == NULL) {
        *out = 0;
        return 0;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || v < 0) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
        }
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* The mask remembered for block ``h``: young first, then old. 1 = found young. */
static int lookup(PyObject *young, PyObject *old, PyObject *h, uint64_t *mask, int *is_young) {
    PyObject *m = PyDict_GetItemWithError(young, h);
    if (m == NULL && PyErr_Occurred()) {
        return -2;
    }
    *is_young = m != NULL;
    if (m == NULL) {
        m = PyDict_GetItemWithError(old, h);
        if (m == NULL && PyErr_Occurred()) {
            return -2;
        }
    }
    return mask_of(m, mask);
}

static PyObject *scan_fast(PyObject *candidates, PyObject *key, PyObject *young, PyObject *old,
                           PyObject *bits, double balance_abs, double balance_rel, double per,
                           PyObject *randrange, PyObject *anchor, double credit,
                           PyObject *rid_hashes, double owed_per);

/* lb_agent/dataplane/rendezvous.py's weight. */
static inline uint64_t rendezvous_weight(uint64_t key, uint64_t rid_hash) {
    uint64_t z = key ^ rid_hash;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    PyObject *seq, *key, *young, *old, *bits, *randrange, *anchor, *rid_hashes;
    double balance_abs, balance_rel, per, credit, owed_per;
    if (arg_count("scan", nargs, 13) < 0) {
        return NULL;
    }
    seq = args[0];
    key = args[1];
    young = args[2];
    old = args[3];
    bits = args[4];
    randrange = args[8];
    anchor = args[9];
    rid_hashes = args[11];
    if (arg_type("scan", 2, key, &PyList_Type) < 0 ||
        arg_type("scan", 3, young, &PyDict_Type) < 0 ||
        arg_type("scan", 4, old, &PyDict_Type) < 0 ||
        arg_type("scan", 5, bits, &PyDict_Type) < 0 ||
        arg_double(args[5], &balance_abs) < 0 || arg_double(args[6], &balance_rel) < 0 ||
        arg_double(args[7], &per) < 0 || arg_double(args[10], &credit) < 0 ||
        arg_type("scan", 12, rid_hashes, &PyDict_Type) < 0 ||
        arg_double(args[12], &owed_per) < 0) {
        return NULL;
    }
    PyObject *candidates = PySequence_Fast(seq, "candidates must be a sequence");
    if (candidates == NULL) {
        return NULL;
    }
    PyObject *result = scan_fast(candidates, key, young, old, bits, balance_abs, balance_rel,
                                 per, randrange, anchor, credit, rid_hashes, owed_per);
    Py_DECREF(candidates);
    return result;
}

static PyObject *scan_fast(PyObject *candidates, PyObject *key, PyObject *young, PyObject *old,
                           PyObject *bits, double balance_abs, double balance_rel, double per,
                           PyObject *randrange, PyObject *anchor, double credit,
                           PyObject *rid_hashes, double owed_per) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(candidates);
    Py_ssize_t nkey = PyList_GET_SIZE(key);
    if (n == 0 || n > MAX_CANDIDATES) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    uint64_t cbit[MAX_CANDIDATES];
    uint64_t chash[MAX_CANDIDATES];
    long long load[MAX_CANDIDATES];
    long long owed[MAX_CANDIDATES];
    int anchored = anchor != Py_None;
    uint64_t anchor_key = 0;
    if (anchored) {
        /* Modulo 2**64, as rendezvous.weight's "& _MASK" (and without the general
         * conversion's byte-array path, a few hundred instructions per request). */
        anchor_key = PyLong_AsUnsignedLongLongMask(anchor);
        if (anchor_key == (uint64_t)-1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    uint64_t pending = 0;
    long long least = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(candidates, i);
        PyObject *rid = PyObject_GetAttr(t, str_replica_id);
        if (rid == NULL) {
            return NULL;
        }
        PyObject *b = PyDict_GetItemWithError(bits, rid);
        PyObject *rh = (b == NULL && PyErr_Occurred()) || !anchored
                           ? NULL : PyDict_GetItemWithError(rid_hashes, rid);
        Py_DECREF(rid);
        if (PyErr_Occurred()) {
            return NULL;
        }
        if (anchored) {
            if (rh == NULL) {
                Py_RETURN_NOTIMPLEMENTED;
            }
            chash[i] = PyLong_AsUnsignedLongLongMask(rh);
            if (chash[i] == (uint64_t)-1 && PyErr_Occurred()) {
                return NULL;
            }
        }
        if (mask_of(b, &cbit[i]) < 0) {
            Py_RETURN_NOTIMPLEMENTED;
        }
        pending |= cbit[i];
        PyObject *f = PyObject_GetAttr(t, str_in_flight);
        if (f == NULL) {
            return NULL;
        }
        load[i] = PyLong_AsLongLong(f);
        Py_DECREF(f);
        if (load[i] == -1 && PyErr_Occurred()) {
            return NULL;
        }
        f = PyObject_GetAttr(t, str_owed);
        if (f == NULL) {
            return NULL;
        }
        owed[i] = PyLong_AsLongLong(f);
        Py_DECREF(f);
        if (owed[i] == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (i == 0 || load[i] < least) {
            least = load[i];
        }
    }
    double rel = balance_rel * (double)least;
    double bound = (double)least + (balance_abs > rel ? balance_abs : rel);
    /* The favoured candidate: the heaviest rendezvous weight within the bound. */
    Py_ssize_t favored = -1;
    uint64_t weight[MAX_CANDIDATES];
    if (anchored) {
        uint64_t best_w = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            weight[i] = rendezvous_weight(anchor_key, chash[i]);
            if ((double)load[i] > bound) {
                continue;
            }
            if (favored < 0 || weight[i] > best_w) {
                favored = i;
                best_w = weight[i];
            }
        }
    }
    if (!pending && favored < 0) {
        Py_RETURN_NONE;
    }
    /* Depth per bit: found[k] is the set of bits with depth dep[k] (and youth yng[k]). */
    uint64_t found_bits[MAX_CANDIDATES + 1];
    Py_ssize_t found_depth[MAX_CANDIDATES + 1];
    int found_young[MAX_CANDIDATES + 1];
    int nfound = 0;
    found_depth[0] = 0;
    Py_ssize_t deepest = pending ? nkey : 0;
    while (deepest) {
        uint64_t mask;
        int is_young;
        int rc = lookup(young, old, PyList_GET_ITEM(key, deepest - 1), &mask, &is_young);
        if (rc == -2) {
            return NULL;
        }
        if (rc < 0) {
            Py_RETURN_NOTIMPLEMENTED;
        }
        uint64_t hit = mask & pending;
        if (hit) {
            pending &= ~hit;
            found_bits[nfound] = hit;
            found_depth[nfound] = deepest;
            found_young[nfound] = is_young;
            nfound++;
            break;
        }
        deepest--;
    }
    if (!nfound && favored < 0) {
        Py_RETURN_NONE;
    }
    /* The others: up from the first block while they still match. */
    int prev_young = 0;
    Py_ssize_t j = 0;
    for (; j < deepest - 1 && pending; j++) {
        uint64_t mask;
        int is_young;
        int rc = lookup(young, old, PyList_GET_ITEM(key, j), &mask, &is_young);
        if (rc == -2) {
            return NULL;
        }
        if (rc < 0) {
            Py_RETURN_NOTIMPLEMENTED;
        }
        uint64_t held = mask & pending;
        if (j && pending != held) {  /* they hold exactly j blocks */
            found_bits[nfound] = pending & ~held;
            found_depth[nfound] = j;
            found_young[nfound] = prev_young;
            nfound++;
        }
        pending = held;
        prev_young = is_young;
    }
    if (j == deepest - 1 && deepest > 1 && pending) {
        found_bits[nfound] = pending;
        found_depth[nfound] = deepest - 1;
        found_young[nfound] = prev_young;
        nfound++;
    }
    /* The lowest load + owed * owed_per - depth / per within the bound, reservoir sampling
     * among ties. */
    Py_ssize_t best = -1;
    Py_ssize_t best_depth = 0;
    int best_young = 0;
    double best_score = 0.0;
    long ties = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((double)load[i] > bound) {
            continue;
        }
        Py_ssize_t d = 0;
        int y = 0;
        for (int k = 0; k < nfound; k++) {
            if (cbit[i] & found_bits[k]) {
                d = found_depth[k];
                y = found_young[k];
                break;
            }
        }
        double credited = (double)d / per;
        if (i == favored && credit > credited) {
            credited = credit;
        }
        double score = (double)load[i] + (double)owed[i] * owed_per - credited;
        if (best < 0 || score < best_score) {
            best = i;
            best_depth = d;
            best_young = y;
            best_score = score;
            ties = 1;
        } else if (score == best_score && anchored) {
            if (weight[i] > weight[best]) {  /* the rendezvous order breaks ties */
                best = i;
                best_depth = d;
                best_young = y;
            }
        } else if (score == best_score) {
            ties++;
            PyObject *r = PyObject_CallFunction(randrange, "l", ties);
            if (r == NULL) {
                return NULL;
            }
            long pick = PyLong_AsLong(r);
            Py_DECREF(r);
            if (pick == -1 && PyErr_Occurred()) {
                return NULL;
            }
            if (pick == 0) {
                best = i;
                best_depth = d;
                best_young = y;
            }
        }
    }
    PyObject *out = PyTuple_New(4);
    if (out == NULL) {
        return NULL;
    }
    PyObject *items[4] = {PyLong_FromSsize_t(best), PyLong_FromSsize_t(best_depth),
                          PyBool_FromLong(best_young), PyLong_FromSsize_t(found_depth[0])};
    for (int k = 0; k < 4; k++) {
        if (items[k] == NULL) {
            for (int j = k + 1; j < 4; j++) {
                Py_XDECREF(items[j]);
            }
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, k, items[k]);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"block_hashes", block_hashes, METH_VARARGS,
     "block_hashes(data, block, seed) -> list[int]: chained hashes of data's whole blocks."},
    {"prompt_key", (PyCFunction)(void (*)(void))prompt_key, METH_FASTCALL,
     "prompt_key(body, keys, limit, block, seed, anchor_blocks, key_type): None, or a key_type "
     "(a list subclass) holding block_hashes of prompt_span(body, limit), with ``anchor`` "
     "(zlib.crc32 of the first anchor_blocks blocks, or None when there are fewer) and "
     "``charge`` -1."},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(candidates, key, young, old, bits, balance_abs, balance_rel, per, randrange, "
     "anchor, credit, rid_hashes, owed_per): prefix_aware's depths, favoured replica and best "
     "score in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_prefix_native",
    "prefix_aware's per-request work at C speed (an optional build).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__prefix_native(void) {
    str_in_flight = PyUnicode_InternFromString("in_flight");
    str_replica_id = PyUnicode_InternFromString("replica_id");
    str_anchor = PyUnicode_InternFromString("anchor");
    str_charge = PyUnicode_InternFromString("charge");
    str_owed = PyUnicode_InternFromString("owed");
    minus_one = PyLong_FromLong(-1);
    empty_tuple = PyTuple_New(0);
    if (str_in_flight == NULL || str_replica_id == NULL || str_anchor == NULL ||
        str_charge == NULL || str_owed == NULL || minus_one == NULL || empty_tuple == NULL) {
        return NULL;
    }
    crc_init();
    PyObject *m = PyModule_Create(&module);
    /* The contracts' version (prefix_aware.NATIVE_VERSION): a build from older source is
     * set aside. */
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", 2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
