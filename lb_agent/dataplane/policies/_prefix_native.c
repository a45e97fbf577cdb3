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
 * choose(candidates, key, young, old, bits, balance_abs, balance_rel, per, randrange,
 *        key_type, credit, rid_hashes, owed_per, turns, counts)
 *     PrefixAwarePolicy.choose's scan and settlement. The scan (``_scan``): each candidate's
 *     matched depth (walking down from the deepest block, then up for the others, since what
 *     a replica holds is prefix-closed); the favoured candidate when ``key`` is a
 *     ``key_type`` (PromptKey) with an int ``anchor``: the heaviest rendezvous weight
 *     (lb_agent/dataplane/rendezvous.py: splitmix64's finalizer of anchor ^ the replica's
 *     value in ``rid_hashes``) within the balance bound; then the lowest in-flight count plus
 *     ``owed`` (the candidate's owed prefill blocks) times ``owed_per``, minus depth / per
 *     (for the favoured one, at least ``credit`` less) within the bound, ties broken by the
 *     rendezvous weight when anchored, else by reservoir sampling with the same
 *     ``randrange`` calls as the Python version, so a seeded policy makes the same choices
 *     either way. Then, for a PromptKey whose chosen replica has its bit already, what
 *     ``_settle`` and the counters do: ``counts`` (a list: anchored, matched, fallbacks) gets
 *     one more, the key its ``charge``, ``start`` and ``turn`` (= ``turns``), the Target its
 *     ``owed`` prefill; and the Target is returned. Otherwise it returns what the caller
 *     must finish: None when no candidate holds any block of ``key`` and none is favoured,
 *     (index of the chosen candidate, its depth, whether its deepest block is young, the
 *     deepest depth found) for a plain list key or a replica without a bit, or
 *     NotImplemented when a mask does not fit 64 bits (more than 64 live replicas), a
 *     candidate has no value in ``rid_hashes``, or ``key`` is another list subclass: the
 *     caller then runs the Python version.
 *
 * release(target, key, bits, turns, key_type)
 *     PrefixAwarePolicy.release up to its recording: for a ``key_type`` key with a charge
 *     (>= 0), pays the charge back from ``target.owed``, sets it to -1, and returns the first
 *     block of ``key`` still to record for ``target`` (its ``start`` when ``turn`` is
 *     ``turns``, else 0), or None when there is nothing to record (the replica has no bit in
 *     ``bits`` any more, or holds the whole prompt young) or nothing to do.
 *
 * crc32(data, fold)
 *     zlib.crc32(data), with or without the carry-less folding (for the tests).
 *
 * PromptKey and Target keep their fields in __slots__, which these functions read and write
 * by the member descriptors' offsets (see Slots).
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX, READONLY */
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_CRC_FOLD 1 /* crc_fold: see crc32_of */
#include <immintrin.h>
#endif

#define MAX_CANDIDATES 64
#define VALUE_MASK ((1ULL << 60) - 1)

static const uint64_t P1 = 0x9E3779B185EBCA87ULL;
static const uint64_t P2 = 0xC2B2AE3D27D4EB4FULL;
static const uint64_t P3 = 0x165667B19E3779F9ULL;
static const uint64_t P5 = 0x27D4EB2F165667C5ULL;


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

static inline Py_ssize_t block_count(Py_ssize_t n, Py_ssize_t block) {
    return n >= block ? n / block : (n > 0 ? 1 : 0);
}

/* The chained hashes of data[0:n] (see block_hashes) as new Python ints in items[0, count);
 * -1 with an exception set (and no reference held) when an int cannot be made. */
static int hash_into(PyObject **items, const unsigned char *data, Py_ssize_t n,
                     Py_ssize_t block, uint64_t seed) {
    Py_ssize_t count = block_count(n, block);
    Py_ssize_t size = n >= block ? block : n;
    uint64_t h = seed ^ P5;
    for (Py_ssize_t k = 0; k < count; k++) {
        h = mix_block(h, data + k * size, size);
        /* 60 bits: two 30-bit digits, so a remembered block's int is as small as CPython's
         * own hash values (the chain itself keeps all 64). */
        PyObject *value = PyLong_FromUnsignedLongLong(h & VALUE_MASK);
        if (value == NULL) {
            while (k > 0) {
                Py_CLEAR(items[--k]);
            }
            return -1;
        }
        items[k] = value;
    }
    return 0;
}

/* The chained hashes of data[0:n] (see block_hashes), as a list of Python ints. */
static PyObject *hash_blocks(const unsigned char *data, Py_ssize_t n, Py_ssize_t block,
                             uint64_t seed) {
    PyObject *out = PyList_New(block_count(n, block));
    if (out != NULL && hash_into(((PyListObject *)out)->ob_item, data, n, block, seed) < 0) {
        Py_SET_SIZE(out, 0);
        Py_CLEAR(out);
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
static int crc_fold_ok;

static void crc_init(void) {
#ifdef HAVE_CRC_FOLD
    __builtin_cpu_init();
    crc_fold_ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
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

/* The table-driven CRC below reads 8 KB of tables at random: in the agent, whose other work
 * evicts them between requests, about 80 first-level cache misses per 512-byte anchor
 * (bench/proxy_cost_bench.py --cache-sim). Where the CPU has carry-less multiplication
 * (x86-64 with PCLMULQDQ and SSE4.1, checked at import), whole 16-byte blocks of at least 64
 * bytes are folded with it instead: no table, a few hundred instructions fewer. */
#ifdef HAVE_CRC_FOLD
/* CRC-32 (zlib's) by carry-less multiplication, 64 bytes a step: the folding of Intel's
 * "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ". len >= 64. Takes and
 * returns the raw register (not inverted). */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc_fold(const unsigned char *buf, size_t len, uint32_t crc) {
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;
    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = k1k2;
    buf += 64; len -= 64;
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        buf += 64; len -= 64;
    }
    x0 = k3k4;
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16; len -= 16;
    }
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = k5k0;
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = poly;
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

#endif

static uint32_t crc32_of(const unsigned char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFU;
    Py_ssize_t i = 0;
#ifdef HAVE_CRC_FOLD
    if (crc_fold_ok && n >= 64) {
        i = n & ~(Py_ssize_t)15;
        c = crc_fold(p, (size_t)i, c);
    }
#endif
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

/* crc32(data, fold): crc32_of ``data`` with (True) or without (False) the carry-less folding,
 * for the tests (both must equal zlib.crc32); the folding only where crc_fold_ok. */
static PyObject *crc32(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    int fold;
    if (!PyArg_ParseTuple(args, "y*p:crc32", &view, &fold)) {
        return NULL;
    }
    int saved = crc_fold_ok;
    crc_fold_ok = saved && fold;
    uint32_t c = crc32_of((const unsigned char *)view.buf, view.len);
    crc_fold_ok = saved;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(c);
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

static PyObject *minus_one;
static PyObject *empty_tuple;

/* The fields the helper reads and writes on PromptKey and Target objects. Both classes keep
 * them in __slots__: the member descriptors' offsets are looked up once per class, and a
 * field is then one load or store (PyObject_GetAttr/SetAttr walk the type's MRO dicts and
 * their descriptors: hundreds of instructions and a dozen cache misses per request through
 * the agent). An object of another class, or a field that is not a writable object slot,
 * takes the generic attribute path. */
enum { KEY_ANCHOR, KEY_CHARGE, KEY_START, KEY_TURN, KEY_FIELDS };
enum { T_REPLICA_ID, T_IN_FLIGHT, T_OWED, T_FIELDS };
#define MAX_FIELDS 4

typedef struct {
    PyTypeObject *type; /* the class the offsets are for (a strong reference), or NULL */
    int usable;         /* all its fields are writable object slots */
    int n;
    PyObject *names[MAX_FIELDS];
    Py_ssize_t offset[MAX_FIELDS];
} Slots;

static Slots key_slots = {NULL, 0, KEY_FIELDS, {NULL}, {0}};
static Slots target_slots = {NULL, 0, T_FIELDS, {NULL}, {0}};

/* The offset of a writable object slot ``name`` of ``type``'s instances, or -1. */
static Py_ssize_t member_offset(PyTypeObject *type, PyObject *name) {
    /* A member descriptor read from its class is the descriptor itself. */
    PyObject *d = PyObject_GetAttr((PyObject *)type, name);
    if (d == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) {
            offset = m->offset;
        }
    }
    Py_DECREF(d);
    return offset;
}

/* Point ``c`` at ``type`` (looking its offsets up when it is another class than last time). */
static int slots_of(Slots *c, PyTypeObject *type) {
    if (c->type == type) {
        return 0;
    }
    Py_XSETREF(c->type, (PyTypeObject *)Py_NewRef(type));
    c->usable = 1;
    for (int i = 0; i < c->n; i++) {
        c->offset[i] = member_offset(type, c->names[i]);
        c->usable &= c->offset[i] >= 0;
    }
    return 0;
}

/* obj.<field i> (a new reference), or NULL with AttributeError set. */
static inline PyObject *slot_get(PyObject *obj, Slots *c, int i) {
    if (Py_TYPE(obj) == c->type && c->usable) {
        PyObject *v = *(PyObject **)((char *)obj + c->offset[i]);
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    return PyObject_GetAttr(obj, c->names[i]);
}

/* obj.<field i> = value. */
static inline int slot_set(PyObject *obj, Slots *c, int i, PyObject *value) {
    if (Py_TYPE(obj) == c->type && c->usable) {
        PyObject **at = (PyObject **)((char *)obj + c->offset[i]);
        Py_XSETREF(*at, Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, c->names[i], value);
}

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
    /* The key_type instance (list.__new__, no __init__) holding the hashes, its anchor (None
     * for a prompt shorter than anchor_blocks) and charge -1 (not routed yet). The items are
     * written into the new list's own array (no list of them to copy in), the two fields into
     * their slots (no attribute lookup through the type). */
    PyTypeObject *type = (PyTypeObject *)key_type;
    Py_ssize_t count = block_count(len, block);
    if (slots_of(&key_slots, type) < 0) {
        return NULL;
    }
    PyObject *out = type->tp_new(type, empty_tuple, NULL);
    if (out == NULL) {
        return NULL;
    }
    PyListObject *list = (PyListObject *)out;
    if (count > 0) {
        list->ob_item = PyMem_New(PyObject *, (size_t)count);
        if (list->ob_item == NULL) {
            Py_DECREF(out);
            return PyErr_NoMemory();
        }
        list->allocated = count;
        if (hash_into(list->ob_item, at, len, block, seed) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        Py_SET_SIZE(out, count);
    }
    PyObject *anchor = NULL;
    if (anchor_blocks < 1 || count < anchor_blocks) {
        anchor = Py_NewRef(Py_None);
    } else {
        Py_ssize_t anchor_len = anchor_blocks * block < len ? anchor_blocks * block : len;
        anchor = PyLong_FromUnsignedLong(crc32_of(at, anchor_len));
    }
    if (anchor == NULL || slot_set(out, &key_slots, KEY_ANCHOR, anchor) < 0 ||
        slot_set(out, &key_slots, KEY_CHARGE, minus_one) < 0) {
        Py_CLEAR(out);
    }
    Py_XDECREF(anchor);
    return out;
}

/* Generation: one generation of PrefixAwarePolicy's block memory (block hash -> replica
 * mask), the mapping the Python version keeps in a dict, as an open-addressing table of
 * 16-byte slots (a 64-bit key and its 64-bit mask; mask 0 marks an empty slot), linear
 * probing, at most half full. A lookup by scan reads one slot, usually one cache line, where a
 * dict with int keys reads its index, its entry and the key's int object (and hashes and
 * compares that object). Keys are ints in [0, 2**64), masks ints in [1, 2**64): what the
 * helper's block hashes and at most 64 replicas' bits make (prefix_aware falls back to dicts
 * for more replicas). It supports what prefix_aware and its tests use of a dict: len, in,
 * [h], [h] = mask, del [h], get, pop, items and iteration (over a snapshot of the keys). */
typedef struct {
    uint64_t key;
    uint64_t mask;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    Py_ssize_t cap; /* a power of two, or 0 before the first insertion */
    Py_ssize_t len;
    int shift;      /* 64 - log2(cap) */
} Generation;

static PyTypeObject GenerationType;

static inline size_t gen_home(const Generation *g, uint64_t key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> g->shift);
}

static inline Slot *gen_find(const Generation *g, uint64_t key) {
    if (g->cap == 0) {
        return NULL;
    }
    size_t m = (size_t)g->cap - 1;
    for (size_t i = gen_home(g, key);; i = (i + 1) & m) {
        Slot *s = &g->slots[i];
        if (s->mask == 0) {
            return NULL;
        }
        if (s->key == key) {
            return s;
        }
    }
}

static void gen_place(Generation *g, uint64_t key, uint64_t mask) {
    size_t m = (size_t)g->cap - 1;
    size_t i = gen_home(g, key);
    while (g->slots[i].mask != 0) {
        i = (i + 1) & m;
    }
    g->slots[i].key = key;
    g->slots[i].mask = mask;
}

static int gen_resize(Generation *g, Py_ssize_t cap) {
    Slot *old = g->slots;
    Py_ssize_t old_cap = g->cap;
    Slot *slots = PyMem_Calloc((size_t)cap, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int bits = 0;
    while (((Py_ssize_t)1 << bits) < cap) {
        bits++;
    }
    g->slots = slots;
    g->cap = cap;
    g->shift = 64 - bits;
    for (Py_ssize_t i = 0; i < old_cap; i++) {
        if (old[i].mask != 0) {
            gen_place(g, old[i].key, old[i].mask);
        }
    }
    PyMem_Free(old);
    return 0;
}

/* g[key] = mask (mask != 0). */
static int gen_set(Generation *g, uint64_t key, uint64_t mask) {
    Slot *s = gen_find(g, key);
    if (s != NULL) {
        s->mask = mask;
        return 0;
    }
    if ((g->len + 1) * 2 > g->cap && gen_resize(g, g->cap ? g->cap * 2 : 16) < 0) {
        return -1;
    }
    gen_place(g, key, mask);
    g->len++;
    return 0;
}

/* Remove key (its mask, or 0 when absent): the slots after it move back (linear probing's
 * deletion, no tombstones). */
static uint64_t gen_pop(Generation *g, uint64_t key) {
    Slot *s = gen_find(g, key);
    if (s == NULL) {
        return 0;
    }
    uint64_t mask = s->mask;
    size_t m = (size_t)g->cap - 1;
    size_t i = (size_t)(s - g->slots);
    size_t j = i;
    for (;;) {
        j = (j + 1) & m;
        if (g->slots[j].mask == 0) {
            break;
        }
        size_t k = gen_home(g, g->slots[j].key);
        /* The entry at j may move to the hole at i unless its home lies cyclically in (i, j]. */
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            g->slots[i] = g->slots[j];
            i = j;
        }
    }
    g->slots[i].key = 0;
    g->slots[i].mask = 0;
    g->len--;
    return mask;
}

/* An int key as 64 bits: 1, 0 when it cannot be one (not in [0, 2**64): never stored), -1
 * with TypeError for a non-int. */
static int gen_key(PyObject *h, uint64_t *out) {
    if (!PyLong_Check(h)) {
        PyErr_Format(PyExc_TypeError, "Generation keys are ints, not %.50s",
                     Py_TYPE(h)->tp_name);
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    /* Up to two 30-bit digits (every block hash of the helper: 60 bits), read directly:
     * PyLong_AsUnsignedLongLong converts any int of two digits or more through a byte array
     * (~50 instructions a lookup). Py_SIZE of an int is its signed digit count up to 3.11. */
    if (Py_SIZE(h) >= 0 && Py_SIZE(h) <= 2) {
        *out = PyLong_AsUnsignedLongLongMask(h);
        return 1;
    }
#endif
    *out = PyLong_AsUnsignedLongLong(h);
    if (*out == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or too large */
        return 0;
    }
    return 1;
}

static PyObject *gen_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Generation() takes no arguments");
        return NULL;
    }
    Generation *g = (Generation *)type->tp_alloc(type, 0);
    if (g != NULL) {
        g->slots = NULL;
        g->cap = 0;
        g->len = 0;
        g->shift = 64;
    }
    return (PyObject *)g;
}

static void gen_dealloc(Generation *g) {
    PyMem_Free(g->slots);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static Py_ssize_t gen_length(Generation *g) {
    return g->len;
}

static PyObject *gen_subscript(Generation *g, PyObject *h) {
    uint64_t key;
    int rc = gen_key(h, &key);
    if (rc < 0) {
        return NULL;
    }
    Slot *s = rc ? gen_find(g, key) : NULL;
    if (s == NULL) {
        PyErr_SetObject(PyExc_KeyError, h);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(s->mask);
}

static int gen_ass_subscript(Generation *g, PyObject *h, PyObject *value) {
    uint64_t key;
    int rc = gen_key(h, &key);
    if (rc < 0) {
        return -1;
    }
    if (value == NULL) {
        if (!rc || gen_pop(g, key) == 0) {
            PyErr_SetObject(PyExc_KeyError, h);
            return -1;
        }
        return 0;
    }
    if (!rc) {
        PyErr_SetString(PyExc_OverflowError, "a Generation key is an int in [0, 2**64)");
        return -1;
    }
    uint64_t mask = PyLong_Check(value) ? PyLong_AsUnsignedLongLong(value) : 0;
    if (mask == 0 || (mask == (uint64_t)-1 && PyErr_Occurred())) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "a Generation mask is an int in [1, 2**64)");
        return -1;
    }
    return gen_set(g, key, mask);
}

static int gen_contains(Generation *g, PyObject *h) {
    uint64_t key;
    int rc = gen_key(h, &key);
    return rc <= 0 ? rc : gen_find(g, key) != NULL;
}

/* get(h, default=None) and pop(h[, default]). */
static PyObject *gen_get_or_pop(Generation *g, PyObject *const *args, Py_ssize_t nargs,
                                int pop) {
    const char *name = pop ? "pop" : "get";
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 1 or 2 arguments (%zd given)", name, nargs);
        return NULL;
    }
    uint64_t key;
    int rc = gen_key(args[0], &key);
    if (rc < 0) {
        return NULL;
    }
    uint64_t mask = 0;
    if (rc) {
        if (pop) {
            mask = gen_pop(g, key);
        } else {
            Slot *s = gen_find(g, key);
            mask = s != NULL ? s->mask : 0;
        }
    }
    if (mask != 0) {
        return PyLong_FromUnsignedLongLong(mask);
    }
    if (nargs == 2) {
        return Py_NewRef(args[1]);
    }
    if (pop) {
        PyErr_SetObject(PyExc_KeyError, args[0]);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *gen_get(Generation *g, PyObject *const *args, Py_ssize_t nargs) {
    return gen_get_or_pop(g, args, nargs, 0);
}

static PyObject *gen_pop_method(Generation *g, PyObject *const *args, Py_ssize_t nargs) {
    return gen_get_or_pop(g, args, nargs, 1);
}

/* [(h, mask), ...] (items) or [h, ...] (keys), in slot order. */
static PyObject *gen_list(Generation *g, int pairs) {
    PyObject *out = PyList_New(g->len);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < g->cap && k < g->len; i++) {
        if (g->slots[i].mask == 0) {
            continue;
        }
        PyObject *item = pairs ? Py_BuildValue("(KK)", (unsigned long long)g->slots[i].key,
                                               (unsigned long long)g->slots[i].mask)
                               : PyLong_FromUnsignedLongLong(g->slots[i].key);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k++, item);
    }
    return out;
}

static PyObject *gen_items(Generation *g, PyObject *unused) {
    (void)unused;
    return gen_list(g, 1);
}

static PyObject *gen_iter(Generation *g) {
    PyObject *keys = gen_list(g, 0);
    if (keys == NULL) {
        return NULL;
    }
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyMethodDef gen_methods[] = {
    {"get", (PyCFunction)(void (*)(void))gen_get, METH_FASTCALL,
     "get(h, default=None): the mask of block h, or default."},
    {"pop", (PyCFunction)(void (*)(void))gen_pop_method, METH_FASTCALL,
     "pop(h[, default]): remove block h and return its mask (default, or KeyError)."},
    {"items", (PyCFunction)gen_items, METH_NOARGS, "items() -> [(h, mask), ...]"},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods gen_as_mapping = {
    (lenfunc)gen_length, (binaryfunc)gen_subscript, (objobjargproc)gen_ass_subscript,
};

static PySequenceMethods gen_as_sequence = {
    .sq_contains = (objobjproc)gen_contains,
};

static PyTypeObject GenerationType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lb_agent.dataplane.policies._prefix_native.Generation",
    .tp_basicsize = sizeof(Generation),
    .tp_dealloc = (destructor)gen_dealloc,
    .tp_as_sequence = &gen_as_sequence,
    .tp_as_mapping = &gen_as_mapping,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One generation of prefix_aware's block memory: block hash -> replica mask, in "
              "an open-addressing table of 64-bit keys and masks.",
    .tp_iter = (getiterfunc)gen_iter,
    .tp_methods = gen_methods,
    .tp_new = gen_new,
};

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
    if (Py_IS_TYPE(young, &GenerationType) && Py_IS_TYPE(old, &GenerationType)) {
        uint64_t key;
        int rc = gen_key(h, &key);
        if (rc < 0) {
            return -2;
        }
        Slot *s = rc ? gen_find((Generation *)young, key) : NULL;
        *is_young = s != NULL;
        if (s == NULL && rc) {
            s = gen_find((Generation *)old, key);
        }
        *mask = s != NULL ? s->mask : 0;
        return 0;
    }
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

/* lb_agent/dataplane/rendezvous.py's weight. */
static inline uint64_t rendezvous_weight(uint64_t key, uint64_t rid_hash) {
    uint64_t z = key ^ rid_hash;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* An int field of a candidate as a long long (-1 with an exception set on failure). */
static int int_field(PyObject *t, int field, long long *out) {
    PyObject *f = slot_get(t, &target_slots, field);
    if (f == NULL) {
        return -1;
    }
    *out = PyLong_AsLongLong(f);
    Py_DECREF(f);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The parameters of the rule (PrefixAwarePolicy's settings). */
typedef struct {
    double balance_abs, balance_rel, per, credit, owed_per;
} Rule;

/* What scan_core found: the chosen candidate's index, its depth and youth, the deepest
 * depth any candidate holds, and the chosen one's bit (0: none yet). */
typedef struct {
    Py_ssize_t index, depth, deepest;
    int young;
    uint64_t bit;
} Found;

enum { SCAN_ERROR = -1, SCAN_FOUND = 0, SCAN_NONE = 1, SCAN_PYTHON = 2 };

/* PrefixAwarePolicy._scan (see choose): SCAN_FOUND with *out, SCAN_NONE (nothing held, no
 * anchor), SCAN_PYTHON (the Python version must run) or SCAN_ERROR. */
static int scan_core(PyObject *candidates, PyObject *key, PyObject *young, PyObject *old,
                     PyObject *bits, const Rule *rule, PyObject *randrange, PyObject *anchor,
                     PyObject *rid_hashes, Found *out) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(candidates);
    Py_ssize_t nkey = PyList_GET_SIZE(key);
    if (n == 0 || n > MAX_CANDIDATES) {
        return SCAN_PYTHON;
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
            return SCAN_ERROR;
        }
    }
    slots_of(&target_slots, Py_TYPE(PySequence_Fast_GET_ITEM(candidates, 0)));
    uint64_t pending = 0;
    long long least = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(candidates, i);
        PyObject *rid = slot_get(t, &target_slots, T_REPLICA_ID);
        if (rid == NULL) {
            return SCAN_ERROR;
        }
        PyObject *b = PyDict_GetItemWithError(bits, rid);
        PyObject *rh = (b == NULL && PyErr_Occurred()) || !anchored
                           ? NULL : PyDict_GetItemWithError(rid_hashes, rid);
        Py_DECREF(rid);
        if (PyErr_Occurred()) {
            return SCAN_ERROR;
        }
        if (anchored) {
            if (rh == NULL) {
                return SCAN_PYTHON;
            }
            chash[i] = PyLong_AsUnsignedLongLongMask(rh);
            if (chash[i] == (uint64_t)-1 && PyErr_Occurred()) {
                return SCAN_ERROR;
            }
        }
        if (mask_of(b, &cbit[i]) < 0) {
            return SCAN_PYTHON;
        }
        pending |= cbit[i];
        if (int_field(t, T_IN_FLIGHT, &load[i]) < 0 || int_field(t, T_OWED, &owed[i]) < 0) {
            return SCAN_ERROR;
        }
        if (i == 0 || load[i] < least) {
            least = load[i];
        }
    }
    double rel = rule->balance_rel * (double)least;
    double bound = (double)least + (rule->balance_abs > rel ? rule->balance_abs : rel);
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
        return SCAN_NONE;
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
            return SCAN_ERROR;
        }
        if (rc < 0) {
            return SCAN_PYTHON;
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
        return SCAN_NONE;
    }
    /* The others: up from the first block while they still match. */
    int prev_young = 0;
    Py_ssize_t j = 0;
    for (; j < deepest - 1 && pending; j++) {
        uint64_t mask;
        int is_young;
        int rc = lookup(young, old, PyList_GET_ITEM(key, j), &mask, &is_young);
        if (rc == -2) {
            return SCAN_ERROR;
        }
        if (rc < 0) {
            return SCAN_PYTHON;
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
        double credited = (double)d / rule->per;
        if (i == favored && rule->credit > credited) {
            credited = rule->credit;
        }
        double score = (double)load[i] + (double)owed[i] * rule->owed_per - credited;
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
            /* randrange(ties), without a format string to parse per call. */
            PyObject *n_ties = PyLong_FromLong(ties);
            PyObject *r = n_ties != NULL ? PyObject_CallOneArg(randrange, n_ties) : NULL;
            Py_XDECREF(n_ties);
            if (r == NULL) {
                return SCAN_ERROR;
            }
            long pick = PyLong_AsLong(r);
            Py_DECREF(r);
            if (pick == -1 && PyErr_Occurred()) {
                return SCAN_ERROR;
            }
            if (pick == 0) {
                best = i;
                best_depth = d;
                best_young = y;
            }
        }
    }
    out->index = best;
    out->depth = best_depth;
    out->young = best_young;
    out->deepest = found_depth[0];
    out->bit = cbit[best];
    return SCAN_FOUND;
}

/* (index, depth, young, deepest) as the Python version's _scan returns it. */
static PyObject *found_tuple(const Found *f) {
    PyObject *out = PyTuple_New(4);
    if (out == NULL) {
        return NULL;
    }
    PyObject *items[4] = {PyLong_FromSsize_t(f->index), PyLong_FromSsize_t(f->depth),
                          PyBool_FromLong(f->young), PyLong_FromSsize_t(f->deepest)};
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

/* obj.<field> += delta for an int field. */
static int add_to_field(PyObject *obj, Slots *c, int field, long long delta) {
    PyObject *v = slot_get(obj, c, field);
    if (v == NULL) {
        return -1;
    }
    long long x = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *sum = PyLong_FromLongLong(x + delta);
    if (sum == NULL) {
        return -1;
    }
    int rc = slot_set(obj, c, field, sum);
    Py_DECREF(sum);
    return rc;
}

/* obj.<field> = value for an int field. */
static int set_int_field(PyObject *obj, Slots *c, int field, Py_ssize_t value) {
    PyObject *v = PyLong_FromSsize_t(value);
    if (v == NULL) {
        return -1;
    }
    int rc = slot_set(obj, c, field, v);
    Py_DECREF(v);
    return rc;
}

/* counts[i] += 1 (counts: a list of ints). */
static int count_one(PyObject *counts, Py_ssize_t i) {
    if (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) <= i) {
        PyErr_SetString(PyExc_TypeError, "counts must be a list of 3 ints");
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(PyList_GET_ITEM(counts, i));
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *sum = PyLong_FromSsize_t(n + 1);
    if (sum == NULL) {
        return -1;
    }
    return PyList_SetItem(counts, i, sum);
}

/* young and old: both Generations, or both dicts. */
static int arg_memory(const char *fn, int pos, PyObject *obj) {
    if (PyDict_Check(obj) || Py_IS_TYPE(obj, &GenerationType)) {
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s() argument %d must be dict or Generation, not %.50s", fn,
                 pos, Py_TYPE(obj)->tp_name);
    return -1;
}

static PyObject *choose(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    PyObject *seq, *key, *young, *old, *bits, *randrange, *key_type, *rid_hashes, *turns,
        *counts;
    Rule rule;
    if (arg_count("choose", nargs, 15) < 0) {
        return NULL;
    }
    seq = args[0];
    key = args[1];
    young = args[2];
    old = args[3];
    bits = args[4];
    randrange = args[8];
    key_type = args[9];
    rid_hashes = args[11];
    turns = args[13];
    counts = args[14];
    if (arg_type("choose", 2, key, &PyList_Type) < 0 ||
        arg_memory("choose", 3, young) < 0 || arg_memory("choose", 4, old) < 0 ||
        arg_type("choose", 4, old, Py_TYPE(young)) < 0 ||
        arg_type("choose", 5, bits, &PyDict_Type) < 0 ||
        arg_double(args[5], &rule.balance_abs) < 0 ||
        arg_double(args[6], &rule.balance_rel) < 0 || arg_double(args[7], &rule.per) < 0 ||
        arg_type("choose", 10, key_type, &PyType_Type) < 0 ||
        arg_double(args[10], &rule.credit) < 0 ||
        arg_type("choose", 12, rid_hashes, &PyDict_Type) < 0 ||
        arg_double(args[12], &rule.owed_per) < 0 ||
        arg_type("choose", 14, turns, &PyLong_Type) < 0 ||
        arg_type("choose", 15, counts, &PyList_Type) < 0) {
        return NULL;
    }
    /* A key_type key (a PromptKey) brings its anchor and is settled here; a plain list has
     * neither (the caller settles it); any other list subclass goes to the Python version. */
    int settle = Py_TYPE(key) == (PyTypeObject *)key_type;
    PyObject *anchor;
    if (settle) {
        if (slots_of(&key_slots, (PyTypeObject *)key_type) < 0) {
            return NULL;
        }
        anchor = slot_get(key, &key_slots, KEY_ANCHOR);
        if (anchor == NULL) {
            return NULL;
        }
    } else if (PyList_CheckExact(key)) {
        anchor = Py_NewRef(Py_None);
    } else {
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *candidates = PySequence_Fast(seq, "candidates must be a sequence");
    if (candidates == NULL) {
        Py_DECREF(anchor);
        return NULL;
    }
    Found f;
    int rc = scan_core(candidates, key, young, old, bits, &rule, randrange, anchor, rid_hashes,
                       &f);
    Py_DECREF(anchor);
    PyObject *result = NULL;
    if (rc == SCAN_NONE) {
        result = Py_NewRef(Py_None);
    } else if (rc == SCAN_PYTHON) {
        result = Py_NewRef(Py_NotImplemented);
    } else if (rc == SCAN_FOUND && (!settle || !f.bit)) {
        result = found_tuple(&f);  /* the caller settles (and gives the replica its bit) */
    } else if (rc == SCAN_FOUND) {
        /* PrefixAwarePolicy._settle for a PromptKey, and its counters. */
        PyObject *chosen = PySequence_Fast_GET_ITEM(candidates, f.index);
        Py_ssize_t charge = PyList_GET_SIZE(key) - f.depth;
        Py_ssize_t which = !f.deepest ? 0 : (f.depth == f.deepest ? 1 : 2);
        if (count_one(counts, which) == 0 &&
            set_int_field(key, &key_slots, KEY_CHARGE, charge) == 0 &&
            add_to_field(chosen, &target_slots, T_OWED, charge) == 0 &&
            set_int_field(key, &key_slots, KEY_START, f.young ? f.depth : 0) == 0 &&
            slot_set(key, &key_slots, KEY_TURN, turns) == 0) {
            result = Py_NewRef(chosen);
        }
    }
    Py_DECREF(candidates);
    return result;
}

static PyObject *release(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (arg_count("release", nargs, 5) < 0) {
        return NULL;
    }
    PyObject *target = args[0], *key = args[1], *bits = args[2], *turns = args[3];
    PyObject *key_type = args[4];
    if (arg_type("release", 3, bits, &PyDict_Type) < 0 ||
        arg_type("release", 5, key_type, &PyType_Type) < 0) {
        return NULL;
    }
    if (Py_TYPE(key) != (PyTypeObject *)key_type) {
        Py_RETURN_NONE;  /* not routed by choose (a pinned session) */
    }
    if (slots_of(&key_slots, (PyTypeObject *)key_type) < 0) {
        return NULL;
    }
    PyObject *v = slot_get(key, &key_slots, KEY_CHARGE);
    if (v == NULL) {
        return NULL;
    }
    long long charge = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (charge == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (charge < 0) {
        Py_RETURN_NONE;  /* released already */
    }
    slots_of(&target_slots, Py_TYPE(target));
    if (add_to_field(target, &target_slots, T_OWED, -charge) < 0 ||
        slot_set(key, &key_slots, KEY_CHARGE, minus_one) < 0) {
        return NULL;
    }
    PyObject *rid = slot_get(target, &target_slots, T_REPLICA_ID);
    if (rid == NULL) {
        return NULL;
    }
    PyObject *bit = PyDict_GetItemWithError(bits, rid);
    Py_DECREF(rid);
    if (bit == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;  /* the replica left routing meanwhile */
    }
    /* The young blocks found at choose are still young unless the generations turned over
     * since (then everything is recorded again). */
    PyObject *turn = slot_get(key, &key_slots, KEY_TURN);
    if (turn == NULL) {
        return NULL;
    }
    int same = turn == turns ? 1 : PyObject_RichCompareBool(turn, turns, Py_EQ);
    Py_DECREF(turn);
    if (same < 0) {
        return NULL;
    }
    Py_ssize_t start = 0;
    if (same) {
        PyObject *s = slot_get(key, &key_slots, KEY_START);
        if (s == NULL) {
            return NULL;
        }
        start = PyLong_AsSsize_t(s);
        Py_DECREF(s);
        if (start == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (start >= PyList_GET_SIZE(key)) {
        Py_RETURN_NONE;  /* it held the whole prompt, young */
    }
    return PyLong_FromSsize_t(start);
}

/* record(young, old, key, bit, start, generation) -> int: PrefixAwarePolicy._record on two
 * Generations, up to its turn-over: key[start:] recorded for ``bit``, the deepest block
 * first; -1 when done, else the index i of the block whose insertion filled ``young`` to
 * ``generation`` blocks (the caller then turns the generations over with key[:i]). */
static PyObject *record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Py_ssize_t start, generation;
    if (arg_count("record", nargs, 6) < 0 ||
        arg_type("record", 1, args[0], &GenerationType) < 0 ||
        arg_type("record", 2, args[1], &GenerationType) < 0 ||
        arg_type("record", 3, args[2], &PyList_Type) < 0 ||
        arg_type("record", 4, args[3], &PyLong_Type) < 0 ||
        arg_ssize(args[4], &start) < 0 || arg_ssize(args[5], &generation) < 0) {
        return NULL;
    }
    Generation *young = (Generation *)args[0];
    Generation *old = (Generation *)args[1];
    PyObject *key = args[2];
    uint64_t bit = PyLong_AsUnsignedLongLong(args[3]);
    if (bit == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (bit == 0) {
        PyErr_SetString(PyExc_ValueError, "bit must be an int in [1, 2**64)");
        return NULL;
    }
    for (Py_ssize_t i = PyList_GET_SIZE(key) - 1; i >= start && i >= 0; i--) {
        uint64_t h;
        int rc = gen_key(PyList_GET_ITEM(key, i), &h);
        if (rc <= 0) {
            if (rc == 0) {
                PyErr_SetString(PyExc_OverflowError, "a Generation key is an int in [0, 2**64)");
            }
            return NULL;
        }
        Slot *s = gen_find(young, h);
        if (s == NULL) {  /* new, or promoted from the old generation */
            if (gen_set(young, h, gen_pop(old, h) | bit) < 0) {
                return NULL;
            }
            if (young->len >= generation) {
                return PyLong_FromSsize_t(i);
            }
        } else {
            s->mask |= bit;
        }
    }
    return PyLong_FromLong(-1);
}

static PyMethodDef methods[] = {
    {"crc32", crc32, METH_VARARGS,
     "crc32(data, fold) -> int: zlib.crc32(data), folded by carry-less multiplication when "
     "fold is true and the CPU can (see CRC_FOLD)."},
    {"block_hashes", block_hashes, METH_VARARGS,
     "block_hashes(data, block, seed) -> list[int]: chained hashes of data's whole blocks."},
    {"prompt_key", (PyCFunction)(void (*)(void))prompt_key, METH_FASTCALL,
     "prompt_key(body, keys, limit, block, seed, anchor_blocks, key_type): None, or a key_type "
     "(a list subclass) holding block_hashes of prompt_span(body, limit), with ``anchor`` "
     "(zlib.crc32 of the first anchor_blocks blocks, or None when there are fewer) and "
     "``charge`` -1."},
    {"choose", (PyCFunction)(void (*)(void))choose, METH_FASTCALL,
     "choose(candidates, key, young, old, bits, balance_abs, balance_rel, per, randrange, "
     "key_type, credit, rid_hashes, owed_per, turns, counts): prefix_aware's choice, settled "
     "(the chosen Target), or what its caller must finish: None, (index, depth, young, "
     "deepest), or NotImplemented."},
    {"record", (PyCFunction)(void (*)(void))record, METH_FASTCALL,
     "record(young, old, key, bit, start, generation) -> int: _record on two Generations up "
     "to its turn-over: -1, or the index of the block that filled young."},
    {"release", (PyCFunction)(void (*)(void))release, METH_FASTCALL,
     "release(target, key, bits, turns, key_type): prefix_aware's release without its "
     "recording: None, or the first block of key still to record for target."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_prefix_native",
    "prefix_aware's per-request work at C speed (an optional build).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__prefix_native(void) {
    static const char *key_names[KEY_FIELDS] = {"anchor", "charge", "start", "turn"};
    static const char *target_names[T_FIELDS] = {"replica_id", "in_flight", "owed"};
    for (int i = 0; i < KEY_FIELDS; i++) {
        key_slots.names[i] = PyUnicode_InternFromString(key_names[i]);
        if (key_slots.names[i] == NULL) {
            return NULL;
        }
    }
    for (int i = 0; i < T_FIELDS; i++) {
        target_slots.names[i] = PyUnicode_InternFromString(target_names[i]);
        if (target_slots.names[i] == NULL) {
            return NULL;
        }
    }
    minus_one = PyLong_FromLong(-1);
    empty_tuple = PyTuple_New(0);
    if (minus_one == NULL || empty_tuple == NULL) {
        return NULL;
    }
    crc_init();
    if (PyType_Ready(&GenerationType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "Generation", (PyObject *)&GenerationType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* The contracts' version (prefix_aware.NATIVE_VERSION): a build from older source is
     * set aside. */
    if (m != NULL && (PyModule_AddIntConstant(m, "VERSION", 3) < 0 ||
                      PyModule_AddIntConstant(m, "CRC_FOLD", crc_fold_ok) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
