/* rokv.worker._native: the worker's compiled serving loop.
 *
 * What it does, and nothing more:
 *   - the worker's receive-answer-reply loop for the common requests (get and
 *     mget of well-formed keys, hits and canonical misses), over a dict or a
 *     memory-mapped .rokv store, talking to libzmq directly;
 *   - everything else (ping, malformed or unusual requests, invalid or
 *     non-canonical keys, several frames, a stored value that is not valid
 *     UTF-8) is handed, frames and all, to the
 *     Python handler, so every error reply stays exactly what
 *     rokv.worker.handler answers.
 *
 * The protocol's constants (field names, operations, version, the mget
 * limit, the not-found code and message) and the layout of the counters
 * (rokv.server.stats) are not restated here: configure() takes them from
 * Python (rokv.worker.native.constants()), and config() gives them back, so
 * a test pins what the loop was given.
 *
 * libzmq is the one pyzmq loaded: its path is given to init(), which finds it
 * with dlopen(RTLD_NOLOAD) (pyzmq loads it privately) and looks up the few
 * functions used. Sockets are pyzmq's, passed as their libzmq address
 * (Socket.underlying); their options (timeouts) are set from Python.
 *
 * The wire format produced is byte for byte what msgpack-python's Packer
 * produces for the same reply (the tests compare them).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------ libzmq */

typedef struct { unsigned char _[64]; } zmsg_t; /* zmq_msg_t is 64 opaque bytes */

static int (*z_msg_init)(zmsg_t *);
static int (*z_msg_recv)(zmsg_t *, void *, int);
static int (*z_msg_send)(zmsg_t *, void *, int);
static int (*z_msg_close)(zmsg_t *);
static void *(*z_msg_data)(zmsg_t *);
static size_t (*z_msg_size)(const zmsg_t *);
static int (*z_msg_more)(const zmsg_t *);
static int (*z_send)(void *, const void *, size_t, int);
static int (*z_errno)(void);
static int zmq_ready = 0;

#define Z_DONTWAIT 1
#define Z_SNDMORE 2

static PyObject *
native_init(PyObject *self, PyObject *arg)
{
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL)
        lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        PyErr_Format(PyExc_OSError, "cannot open libzmq at %s: %s", path, dlerror());
        return NULL;
    }
#define SYM(var, name)                                                                  \
    *(void **)(&var) = dlsym(lib, name);                                                \
    if (var == NULL) {                                                                  \
        PyErr_Format(PyExc_OSError, "libzmq at %s has no %s", path, name);              \
        return NULL;                                                                    \
    }
    SYM(z_msg_init, "zmq_msg_init");
    SYM(z_msg_recv, "zmq_msg_recv");
    SYM(z_msg_send, "zmq_msg_send");
    SYM(z_msg_close, "zmq_msg_close");
    SYM(z_msg_data, "zmq_msg_data");
    SYM(z_msg_size, "zmq_msg_size");
    SYM(z_msg_more, "zmq_msg_more");
    SYM(z_send, "zmq_send");
    SYM(z_errno, "zmq_errno");
#undef SYM
    zmq_ready = 1;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ constants from Python */

/* A short string given by configure(): a field name, an operation, part of a message. */
typedef struct {
    char s[64];
    size_t n;
} name_t;

static name_t F_VERSION, F_ID, F_OP, F_KEY, F_KEYS, F_VALUE, F_VALUES, F_ERROR, F_MESSAGE;
static name_t OP_GET_NAME, OP_MGET_NAME, NOT_FOUND_CODE, NOT_FOUND_BEFORE, NOT_FOUND_AFTER;
static uint64_t protocol_version;
static size_t max_mget_keys;
static int configured = 0;

/* Counters, in rokv.server.stats.RequestStats' layout: requests by (op,
 * outcome), mget keys by outcome, a histogram of handling times. */
#define MAX_COUNTERS 64
#define MAX_BUCKETS 64
static Py_ssize_t n_requests, n_key_outcomes;
static Py_ssize_t r_get_found, r_get_not_found, r_mget_found, r_mget_not_found, k_found, k_not_found;
static unsigned long long st_requests[MAX_COUNTERS], st_keys[MAX_COUNTERS], st_buckets[MAX_BUCKETS + 1];
static double st_seconds, st_bounds[MAX_BUCKETS];
static int st_nbounds = 0;

static int
take_name(PyObject *map, const char *field, name_t *out)
{
    PyObject *value = PyDict_GetItemString(map, field);
    if (value == NULL || !PyUnicode_Check(value)) {
        PyErr_Format(PyExc_ValueError, "configure: %s must be a string", field);
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(value, &n);
    if (s == NULL)
        return -1;
    if ((size_t)n >= sizeof out->s) {
        PyErr_Format(PyExc_ValueError, "configure: %s is longer than %d bytes", field, (int)sizeof out->s - 1);
        return -1;
    }
    memcpy(out->s, s, (size_t)n);
    out->s[n] = 0;
    out->n = (size_t)n;
    return 0;
}

static int
take_index(PyObject *map, const char *field, Py_ssize_t below, Py_ssize_t *out)
{
    PyObject *value = PyDict_GetItemString(map, field);
    Py_ssize_t v = value ? PyLong_AsSsize_t(value) : -1;
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v >= below) {
        PyErr_Format(PyExc_ValueError, "configure: %s must be an integer from 0 to %zd", field, below - 1);
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *
sub_dict(PyObject *map, const char *field)
{
    PyObject *value = PyDict_GetItemString(map, field);
    if (value == NULL || !PyDict_Check(value)) {
        PyErr_Format(PyExc_ValueError, "configure: %s must be a dict", field);
        return NULL;
    }
    return value;
}

/* configure(constants): see rokv.worker.native.constants() for the shape. */
static PyObject *
native_configure(PyObject *self, PyObject *arg)
{
    if (!PyDict_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "configure takes a dict");
        return NULL;
    }
    PyObject *fields = sub_dict(arg, "fields"), *ops, *nf, *stats, *bounds;
    if (fields == NULL || take_name(fields, "version", &F_VERSION) < 0 || take_name(fields, "id", &F_ID) < 0 ||
        take_name(fields, "op", &F_OP) < 0 || take_name(fields, "key", &F_KEY) < 0 ||
        take_name(fields, "keys", &F_KEYS) < 0 || take_name(fields, "value", &F_VALUE) < 0 ||
        take_name(fields, "values", &F_VALUES) < 0 || take_name(fields, "error", &F_ERROR) < 0 ||
        take_name(fields, "message", &F_MESSAGE) < 0)
        return NULL;
    if ((ops = sub_dict(arg, "ops")) == NULL || take_name(ops, "get", &OP_GET_NAME) < 0 ||
        take_name(ops, "mget", &OP_MGET_NAME) < 0)
        return NULL;
    if ((nf = sub_dict(arg, "not_found")) == NULL || take_name(nf, "code", &NOT_FOUND_CODE) < 0 ||
        take_name(nf, "before", &NOT_FOUND_BEFORE) < 0 || take_name(nf, "after", &NOT_FOUND_AFTER) < 0)
        return NULL;
    Py_ssize_t version, limit;
    if (take_index(arg, "version", 128, &version) < 0 || take_index(arg, "max_mget_keys", 1 << 30, &limit) < 0)
        return NULL;
    if ((stats = sub_dict(arg, "stats")) == NULL || take_index(stats, "requests", MAX_COUNTERS + 1, &n_requests) < 0 ||
        take_index(stats, "key_outcomes", MAX_COUNTERS + 1, &n_key_outcomes) < 0 ||
        take_index(stats, "get_found", n_requests, &r_get_found) < 0 ||
        take_index(stats, "get_not_found", n_requests, &r_get_not_found) < 0 ||
        take_index(stats, "mget_found", n_requests, &r_mget_found) < 0 ||
        take_index(stats, "mget_not_found", n_requests, &r_mget_not_found) < 0 ||
        take_index(stats, "key_found", n_key_outcomes, &k_found) < 0 ||
        take_index(stats, "key_not_found", n_key_outcomes, &k_not_found) < 0)
        return NULL;
    bounds = PyDict_GetItemString(stats, "buckets");
    PyObject *seq = bounds ? PySequence_Fast(bounds, "configure: stats buckets must be a sequence") : NULL;
    if (seq == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "configure: stats needs buckets");
        return NULL;
    }
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(seq);
    if (nb > MAX_BUCKETS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "configure: too many buckets");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        st_bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    st_nbounds = (int)nb;
    protocol_version = (uint64_t)version;
    max_mget_keys = (size_t)limit;
    memset(st_requests, 0, sizeof st_requests);
    memset(st_keys, 0, sizeof st_keys);
    memset(st_buckets, 0, sizeof st_buckets);
    st_seconds = 0;
    configured = 1;
    Py_RETURN_NONE;
}

/* config() -> the constants configure() was given, in its shape, read back. */
static PyObject *
native_config(PyObject *self, PyObject *unused)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "rokv.worker._native.configure() was not called");
        return NULL;
    }
    PyObject *bounds = PyTuple_New(st_nbounds);
    if (bounds == NULL)
        return NULL;
    for (int i = 0; i < st_nbounds; i++)
        PyTuple_SET_ITEM(bounds, i, PyFloat_FromDouble(st_bounds[i]));
    return Py_BuildValue(
        "{s:{s:s#,s:s#,s:s#,s:s#,s:s#,s:s#,s:s#,s:s#,s:s#},s:{s:s#,s:s#},s:{s:s#,s:s#,s:s#},s:K,s:n,"
        "s:{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:N}}",
        "fields", "version", F_VERSION.s, (Py_ssize_t)F_VERSION.n, "id", F_ID.s, (Py_ssize_t)F_ID.n, "op", F_OP.s,
        (Py_ssize_t)F_OP.n, "key", F_KEY.s, (Py_ssize_t)F_KEY.n, "keys", F_KEYS.s, (Py_ssize_t)F_KEYS.n, "value",
        F_VALUE.s, (Py_ssize_t)F_VALUE.n, "values", F_VALUES.s, (Py_ssize_t)F_VALUES.n, "error", F_ERROR.s,
        (Py_ssize_t)F_ERROR.n, "message", F_MESSAGE.s, (Py_ssize_t)F_MESSAGE.n, "ops", "get", OP_GET_NAME.s,
        (Py_ssize_t)OP_GET_NAME.n, "mget", OP_MGET_NAME.s, (Py_ssize_t)OP_MGET_NAME.n, "not_found", "code",
        NOT_FOUND_CODE.s, (Py_ssize_t)NOT_FOUND_CODE.n, "before", NOT_FOUND_BEFORE.s, (Py_ssize_t)NOT_FOUND_BEFORE.n,
        "after", NOT_FOUND_AFTER.s, (Py_ssize_t)NOT_FOUND_AFTER.n, "version", (unsigned long long)protocol_version,
        "max_mget_keys", (Py_ssize_t)max_mget_keys, "stats", "requests", n_requests, "key_outcomes", n_key_outcomes,
        "get_found", r_get_found, "get_not_found", r_get_not_found, "mget_found", r_mget_found, "mget_not_found",
        r_mget_not_found, "key_found", k_found, "key_not_found", k_not_found, "buckets", bounds);
}

static inline int
is_name(const char *s, size_t n, const name_t *name)
{
    return n == name->n && memcmp(s, name->s, n) == 0;
}

/* ------------------------------------------------------------ output buffer */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static int
buf_reserve(buf_t *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int
buf_put(buf_t *b, const void *src, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int
buf_byte(buf_t *b, unsigned char c)
{
    return buf_put(b, &c, 1);
}

static int
put_be(buf_t *b, unsigned char tag, uint64_t v, int bytes)
{
    unsigned char tmp[9];
    tmp[0] = tag;
    for (int i = 0; i < bytes; i++)
        tmp[1 + i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
    return buf_put(b, tmp, 1 + bytes);
}

/* msgpack's smallest encoding of a non-negative integer, as msgpack-python's Packer */
static int
pack_uint(buf_t *b, uint64_t v)
{
    if (v < 128)
        return buf_byte(b, (unsigned char)v);
    if (v < 256)
        return put_be(b, 0xcc, v, 1);
    if (v < 65536)
        return put_be(b, 0xcd, v, 2);
    if (v < 4294967296ULL)
        return put_be(b, 0xce, v, 4);
    return put_be(b, 0xcf, v, 8);
}

static int
pack_str(buf_t *b, const char *s, size_t n)
{
    int rc;
    if (n < 32)
        rc = buf_byte(b, (unsigned char)(0xa0 | n));
    else if (n < 256)
        rc = put_be(b, 0xd9, n, 1);
    else if (n < 65536)
        rc = put_be(b, 0xda, n, 2);
    else
        rc = put_be(b, 0xdb, n, 4);
    return rc < 0 ? -1 : buf_put(b, s, n);
}

static inline int
pack_name(buf_t *b, const name_t *name)
{
    return pack_str(b, name->s, name->n);
}

static int
pack_array_header(buf_t *b, size_t n)
{
    if (n < 16)
        return buf_byte(b, (unsigned char)(0x90 | n));
    if (n < 65536)
        return put_be(b, 0xdc, n, 2);
    return put_be(b, 0xdd, n, 4);
}

/* ------------------------------------------------------------ request parsing */

typedef struct {
    const unsigned char *p, *end;
} rd_t;

/* A msgpack str at the cursor: its bytes and length; 0 when it is not a str. */
static int
read_str(rd_t *r, const char **s, size_t *n)
{
    if (r->p >= r->end)
        return 0;
    unsigned char t = *r->p;
    size_t len, head;
    if ((t & 0xe0) == 0xa0) {
        len = t & 0x1f;
        head = 1;
    }
    else if (t == 0xd9 && r->end - r->p >= 2) {
        len = r->p[1];
        head = 2;
    }
    else if (t == 0xda && r->end - r->p >= 3) {
        len = ((size_t)r->p[1] << 8) | r->p[2];
        head = 3;
    }
    else if (t == 0xdb && r->end - r->p >= 5) {
        len = ((size_t)r->p[1] << 24) | ((size_t)r->p[2] << 16) | ((size_t)r->p[3] << 8) | r->p[4];
        head = 5;
    }
    else
        return 0;
    if ((size_t)(r->end - r->p) - head < len)
        return 0;
    *s = (const char *)r->p + head;
    *n = len;
    r->p += head + len;
    return 1;
}

/* A non-negative msgpack integer (any width, signed forms included). */
static int
read_uint(rd_t *r, uint64_t *v)
{
    if (r->p >= r->end)
        return 0;
    unsigned char t = *r->p;
    int bytes;
    int is_signed = 0;
    if (t < 0x80) {
        *v = t;
        r->p++;
        return 1;
    }
    switch (t) {
    case 0xcc: bytes = 1; break;
    case 0xcd: bytes = 2; break;
    case 0xce: bytes = 4; break;
    case 0xcf: bytes = 8; break;
    case 0xd0: bytes = 1; is_signed = 1; break;
    case 0xd1: bytes = 2; is_signed = 1; break;
    case 0xd2: bytes = 4; is_signed = 1; break;
    case 0xd3: bytes = 8; is_signed = 1; break;
    default: return 0;
    }
    if (r->end - r->p < 1 + bytes)
        return 0;
    uint64_t x = 0;
    for (int i = 0; i < bytes; i++)
        x = (x << 8) | r->p[1 + i];
    if (is_signed && (r->p[1] & 0x80))
        return 0; /* negative: not an id; Python words the refusal */
    *v = x;
    r->p += 1 + bytes;
    return 1;
}

#define OP_GET 1
#define OP_MGET 2

typedef struct {
    uint64_t id;
    int op;
    const char *key;
    size_t key_len;
    const unsigned char *keys, *keys_end; /* the items of "keys", still packed */
    size_t nkeys;
} req_t;

/* Every str item of an array: checks and skips them; the count, or -1. */
static int
scan_keys(rd_t *r, size_t n)
{
    const char *s;
    size_t len;
    for (size_t i = 0; i < n; i++)
        if (!read_str(r, &s, &len))
            return -1;
    return 0;
}

/* The common shape of a request, exactly: a map of v=1, id, op get|mget
 * with key|keys (str items), no other field, each once, nothing after it.
 * 1 when parsed; 0 when anything differs (Python then answers). UTF-8
 * validity of keys is checked where they are decoded. */
static int
parse_request(const unsigned char *body, size_t size, req_t *q)
{
    rd_t r = {body, body + size};
    if (size == 0)
        return 0;
    unsigned char t = *r.p;
    size_t fields;
    if ((t & 0xf0) == 0x80) {
        fields = t & 0x0f;
        r.p++;
    }
    else
        return 0;
    int seen_v = 0, seen_id = 0, seen_op = 0, seen_key = 0, seen_keys = 0;
    const char *op = NULL;
    size_t op_len = 0;
    for (size_t f = 0; f < fields; f++) {
        const char *name;
        size_t name_len;
        if (!read_str(&r, &name, &name_len))
            return 0;
        if (is_name(name, name_len, &F_VERSION)) {
            uint64_t v;
            if (seen_v++ || !read_uint(&r, &v) || v != protocol_version)
                return 0;
        }
        else if (is_name(name, name_len, &F_ID)) {
            if (seen_id++ || !read_uint(&r, &q->id))
                return 0;
        }
        else if (is_name(name, name_len, &F_OP)) {
            if (seen_op++ || !read_str(&r, &op, &op_len))
                return 0;
        }
        else if (is_name(name, name_len, &F_KEY)) {
            if (seen_key++ || !read_str(&r, &q->key, &q->key_len))
                return 0;
        }
        else if (is_name(name, name_len, &F_KEYS)) {
            if (seen_keys++ || r.p >= r.end)
                return 0;
            unsigned char a = *r.p;
            size_t n;
            if ((a & 0xf0) == 0x90) {
                n = a & 0x0f;
                r.p++;
            }
            else if (a == 0xdc && r.end - r.p >= 3) {
                n = ((size_t)r.p[1] << 8) | r.p[2];
                r.p += 3;
            }
            else if (a == 0xdd && r.end - r.p >= 5) {
                n = ((size_t)r.p[1] << 24) | ((size_t)r.p[2] << 16) | ((size_t)r.p[3] << 8) | r.p[4];
                r.p += 5;
            }
            else
                return 0;
            if (n > max_mget_keys)
                return 0; /* Python words the refusal */
            q->keys = r.p;
            q->nkeys = n;
            if (scan_keys(&r, n) < 0)
                return 0;
            q->keys_end = r.p;
        }
        else
            return 0;
    }
    if (r.p != r.end || !seen_v || !seen_id || !seen_op)
        return 0;
    if (is_name(op, op_len, &OP_GET_NAME) && seen_key && !seen_keys)
        q->op = OP_GET;
    else if (is_name(op, op_len, &OP_MGET_NAME) && seen_keys && !seen_key)
        q->op = OP_MGET;
    else
        return 0;
    return 1;
}

/* ------------------------------------------------------------ keys and lookups */

static const signed char HEX[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9,
    ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16, ['A'] = 11,
    ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};

/* Where the 32 hex digits of an 8-4-4-4-12 key are. */
static const unsigned char HEX_AT[32] = {0,  1,  2,  3,  4,  5,  6,  7,  9,  10, 11, 12, 14, 15, 16, 17,
                                         19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35};

/* 36 characters, hyphens at 8, 13, 18, 23, hex digits elsewhere (either
 * case): its 16 bytes. The spelling the store's get accepts. */
static inline int
key_bytes(const char *k, size_t n, unsigned char out[16])
{
    if (n != 36 || k[8] != '-' || k[13] != '-' || k[18] != '-' || k[23] != '-')
        return 0;
    unsigned bad = 0;
    for (int i = 0; i < 16; i++) {
        unsigned hi = (unsigned char)HEX[(unsigned char)k[HEX_AT[2 * i]]];
        unsigned lo = (unsigned char)HEX[(unsigned char)k[HEX_AT[2 * i + 1]]];
        bad |= (hi == 0) | (lo == 0);
        out[i] = (unsigned char)(((hi - 1) << 4) | ((lo - 1) & 0x0f));
    }
    return !bad;
}

/* The canonical form of a valid key: lowercase 8-4-4-4-12, version 4, RFC
 * 4122 variant. A miss of such a key is answered here; any other miss goes
 * to Python, which validates and normalises. */
static int
is_canonical(const char *k, size_t n)
{
    if (n != 36)
        return 0;
    for (size_t i = 0; i < 36; i++) {
        char c = k[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        }
        else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return k[14] == '4' && (k[19] == '8' || k[19] == '9' || k[19] == 'a' || k[19] == 'b');
}

/* A dict dataset's index: the 16 bytes of each (canonical) key -> its
 * value's UTF-8, in an open-addressing table, so that a lookup allocates no
 * Python string and hashes nothing (version 4 UUIDs are random: their first
 * 8 bytes are the hash). The values stay owned by the dict. */
typedef struct {
    unsigned char key[16];
    const char *value;
    Py_ssize_t size; /* -1: an empty slot */
} slot_t;

typedef struct {
    PyObject_HEAD
    PyObject *dict;     /* a dict of canonical key -> value, or NULL */
    slot_t *slots;      /* its index, or NULL (then PyDict lookups) */
    size_t mask;
    Py_buffer view;     /* a .rokv file's mapping, when dict is NULL */
    int has_view;
    const unsigned char *table, *keys, *offsets, *values;
    uint64_t n;
    int shift;          /* 32 - B, or 32 when B is 0 */
} Lookup;

static void
Lookup_dealloc(Lookup *self)
{
    PyMem_Free(self->slots);
    Py_XDECREF(self->dict);
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject LookupType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rokv._native.Lookup",
    .tp_basicsize = sizeof(Lookup),
    .tp_dealloc = (destructor)Lookup_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A dataset as the compiled loop reads it: a dict, or a .rokv mapping.",
};

static inline uint64_t
slot_hash(const unsigned char key[16])
{
    uint64_t h;
    memcpy(&h, key, 8);
    return h ^ (h >> 29);
}

/* Index a dict whose keys are all canonical and whose values are all str;
 * leave it unindexed (PyDict lookups) when any is not. */
static int
index_dict(Lookup *l)
{
    Py_ssize_t n = PyDict_Size(l->dict);
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap *= 2;
    slot_t *slots = PyMem_Calloc(cap, sizeof(slot_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < cap; i++)
        slots[i].size = -1;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(l->dict, &pos, &key, &value)) {
        Py_ssize_t kn, vn;
        const char *k, *v;
        unsigned char kb[16];
        if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(value) ||
            (k = PyUnicode_AsUTF8AndSize(key, &kn)) == NULL || !is_canonical(k, (size_t)kn) ||
            !key_bytes(k, (size_t)kn, kb) || (v = PyUnicode_AsUTF8AndSize(value, &vn)) == NULL) {
            PyErr_Clear();
            PyMem_Free(slots);
            return 0; /* not a loader's dict: look up through Python's dict */
        }
        size_t at = slot_hash(kb) & (cap - 1);
        while (slots[at].size >= 0)
            at = (at + 1) & (cap - 1);
        memcpy(slots[at].key, kb, 16);
        slots[at].value = v;
        slots[at].size = vn;
    }
    l->slots = slots;
    l->mask = cap - 1;
    return 0;
}

static PyObject *
native_dict_lookup(PyObject *self, PyObject *d)
{
    if (!PyDict_CheckExact(d)) {
        PyErr_SetString(PyExc_TypeError, "dict_lookup takes a dict");
        return NULL;
    }
    Lookup *l = PyObject_New(Lookup, &LookupType);
    if (l == NULL)
        return NULL;
    Py_INCREF(d);
    l->dict = d;
    l->slots = NULL;
    l->has_view = 0;
    if (index_dict(l) < 0) {
        Py_DECREF(l);
        return NULL;
    }
    return (PyObject *)l;
}

/* Lowercase hex digits only, plus one: the canonical form's alphabet. */
static const unsigned char HEXL[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9,
    ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/* In one pass: is the key canonical (as is_canonical says), and its 16
 * bytes. 1 when it is. */
static inline int
canonical_bytes(const char *k, size_t n, unsigned char out[16])
{
    if (n != 36 || k[8] != '-' || k[13] != '-' || k[18] != '-' || k[23] != '-' || k[14] != '4')
        return 0;
    char variant = k[19];
    if (variant != '8' && variant != '9' && variant != 'a' && variant != 'b')
        return 0;
    unsigned bad = 0;
    for (int i = 0; i < 16; i++) {
        unsigned hi = HEXL[(unsigned char)k[HEX_AT[2 * i]]], lo = HEXL[(unsigned char)k[HEX_AT[2 * i + 1]]];
        bad |= (hi == 0) | (lo == 0);
        out[i] = (unsigned char)(((hi - 1) << 4) | ((lo - 1) & 0x0f));
    }
    return !bad;
}

/* An indexed dict's value for a canonical key: 1 found, 0 missing. */
static int
slots_get(Lookup *l, const unsigned char kb[16], const char **v, size_t *vn)
{
    size_t at = slot_hash(kb) & l->mask;
    while (l->slots[at].size >= 0) {
        if (memcmp(l->slots[at].key, kb, 16) == 0) {
            *v = l->slots[at].value;
            *vn = (size_t)l->slots[at].size;
            return 1;
        }
        at = (at + 1) & l->mask;
    }
    return 0;
}

static PyObject *
native_store_lookup(PyObject *self, PyObject *args)
{
    PyObject *mapping;
    unsigned long long table, keys, offsets, values, n;
    int bits;
    if (!PyArg_ParseTuple(args, "OKKKKKi", &mapping, &table, &keys, &offsets, &values, &n, &bits))
        return NULL;
    Lookup *l = PyObject_New(Lookup, &LookupType);
    if (l == NULL)
        return NULL;
    l->dict = NULL;
    l->slots = NULL;
    l->has_view = 0;
    if (PyObject_GetBuffer(mapping, &l->view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(l);
        return NULL;
    }
    l->has_view = 1;
    const unsigned char *base = l->view.buf;
    if (table > (unsigned long long)l->view.len || values > (unsigned long long)l->view.len) {
        Py_DECREF(l);
        PyErr_SetString(PyExc_ValueError, "store offsets beyond the mapping");
        return NULL;
    }
    l->table = base + table;
    l->keys = base + keys;
    l->offsets = base + offsets;
    l->values = base + values;
    l->n = n;
    l->shift = bits ? 32 - bits : 32;
    return (PyObject *)l;
}

static inline uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t
le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

/* A store's value for a key: 1 and the UTF-8 bytes when found, 0 when not
 * (or the key is not spelled as the store's get accepts). */
static int
store_get(Lookup *l, const char *k, size_t n, const char **v, size_t *vn)
{
    unsigned char kb[16];
    if (!key_bytes(k, n, kb) || l->n == 0)
        return 0;
    uint32_t top = ((uint32_t)kb[0] << 24) | ((uint32_t)kb[1] << 16) | ((uint32_t)kb[2] << 8) | kb[3];
    uint32_t bucket = l->shift >= 32 ? 0 : top >> l->shift;
    uint32_t first = le32(l->table + 4 * (size_t)bucket), last = le32(l->table + 4 * ((size_t)bucket + 1));
    for (uint32_t i = first; i < last; i++) {
        if (memcmp(l->keys + 16 * (size_t)i, kb, 16) == 0) {
            uint64_t a = le64(l->offsets + 8 * (size_t)i), b = le64(l->offsets + 8 * ((size_t)i + 1));
            *v = (const char *)l->values + a;
            *vn = (size_t)(b - a - 1); /* without the 0xFF separator */
            return 1;
        }
    }
    return 0;
}

/* UTF-8 validation as Python's strict decoder judges it: no overlong forms,
 * no surrogates, nothing above U+10FFFF (Unicode's table 3-7). A DFA whose
 * states are bit offsets: utf8_dfa[byte] holds, at each state's offset, the
 * next state, so a byte costs one load and one shift (no branch), whatever
 * the mix of characters. */
enum { U_OK = 0, U_ERR = 6, U_C1 = 12, U_C2 = 18, U_C3 = 24, U_E0 = 30, U_ED = 36, U_F0 = 42, U_F4 = 48 };
static uint64_t utf8_dfa[256];

static void
utf8_dfa_set(int state, int lo, int hi, int next)
{
    for (int b = lo; b <= hi; b++)
        utf8_dfa[b] = (utf8_dfa[b] & ~((uint64_t)63 << state)) | ((uint64_t)next << state);
}

static void
utf8_dfa_init(void)
{
    static const int states[] = {U_OK, U_ERR, U_C1, U_C2, U_C3, U_E0, U_ED, U_F0, U_F4};
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
        utf8_dfa_set(states[i], 0, 255, U_ERR); /* anything not listed below */
    utf8_dfa_set(U_OK, 0x00, 0x7f, U_OK);
    utf8_dfa_set(U_OK, 0xc2, 0xdf, U_C1);
    utf8_dfa_set(U_OK, 0xe0, 0xe0, U_E0);
    utf8_dfa_set(U_OK, 0xe1, 0xec, U_C2);
    utf8_dfa_set(U_OK, 0xed, 0xed, U_ED);
    utf8_dfa_set(U_OK, 0xee, 0xef, U_C2);
    utf8_dfa_set(U_OK, 0xf0, 0xf0, U_F0);
    utf8_dfa_set(U_OK, 0xf1, 0xf3, U_C3);
    utf8_dfa_set(U_OK, 0xf4, 0xf4, U_F4);
    utf8_dfa_set(U_C1, 0x80, 0xbf, U_OK);
    utf8_dfa_set(U_C2, 0x80, 0xbf, U_C1);
    utf8_dfa_set(U_C3, 0x80, 0xbf, U_C2);
    utf8_dfa_set(U_E0, 0xa0, 0xbf, U_C1); /* no overlong 3-byte form */
    utf8_dfa_set(U_ED, 0x80, 0x9f, U_C1); /* no surrogate */
    utf8_dfa_set(U_F0, 0x90, 0xbf, U_C2); /* no overlong 4-byte form */
    utf8_dfa_set(U_F4, 0x80, 0x8f, U_C2); /* nothing above U+10FFFF */
}

/* 1 when s[0..n) is valid UTF-8. */
static int
utf8_valid(const unsigned char *s, size_t n)
{
    /* Most values are ASCII: one pass of 8-byte words tells (the last word
     * overlapping the one before, so that no byte is left for a loop). */
    uint64_t acc = 0, w;
    size_t i = 0;
    if (n >= 8) {
        for (; n - i > 8; i += 8) {
            memcpy(&w, s + i, 8);
            acc |= w;
        }
        memcpy(&w, s + n - 8, 8);
        acc |= w;
    }
    else
        for (; i < n; i++)
            acc |= s[i];
    if (!(acc & 0x8080808080808080ULL))
        return 1;
    uint64_t state = U_OK;
    for (i = 0; i < n; i++)
        state = utf8_dfa[s[i]] >> (state & 63);
    return (state & 63) == U_OK;
}

/* A dict's value: 1 with a new reference in *value when found, 0 when not,
 * -1 when the key is not valid UTF-8 or a lookup failed (Python answers). */
static int
dict_get(Lookup *l, const char *k, size_t n, PyObject **value)
{
    PyObject *key = PyUnicode_DecodeUTF8(k, (Py_ssize_t)n, NULL);
    if (key == NULL) {
        PyErr_Clear();
        return -1;
    }
    PyObject *found = PyDict_GetItemWithError(l->dict, key);
    Py_DECREF(key);
    if (found == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        return 0;
    }
    if (!PyUnicode_CheckExact(found))
        return -1;
    Py_INCREF(found);
    *value = found;
    return 1;
}

/* One key's answer into the reply: its value, nil for a canonical miss. 1
 * done; 0 when Python must answer the request (a non-canonical miss, a
 * non-UTF-8 key); -1 on an error (memory). *hit tells found from missing. */
static int
pack_one(Lookup *l, buf_t *out, const char *k, size_t n, int *hit)
{
    if (l->slots != NULL) {
        /* The dict holds canonical keys only: any other spelling misses here
         * and goes to Python, which normalises it and looks again. */
        unsigned char kb[16];
        if (!canonical_bytes(k, n, kb))
            return 0;
        const char *v;
        size_t vn;
        if (slots_get(l, kb, &v, &vn)) {
            *hit = 1;
            return pack_str(out, v, vn) < 0 ? -1 : 1;
        }
        *hit = 0;
        return 2;
    }
    if (l->dict != NULL) {
        PyObject *value = NULL;
        int got = dict_get(l, k, n, &value);
        if (got < 0)
            return 0;
        if (got) {
            Py_ssize_t vn;
            const char *v = PyUnicode_AsUTF8AndSize(value, &vn);
            if (v == NULL) { /* a lone surrogate: the loader refuses them, but be safe */
                PyErr_Clear();
                Py_DECREF(value);
                return 0;
            }
            int rc = pack_str(out, v, (size_t)vn);
            Py_DECREF(value);
            *hit = 1;
            return rc < 0 ? -1 : 1;
        }
    }
    else {
        const char *v;
        size_t vn;
        if (store_get(l, k, n, &v, &vn)) {
            /* A file changed on disk after it was verified may hold a value
             * that is not UTF-8: never sent as a str; Python answers it
             * (damaged_value), logs and counts it. */
            if (!utf8_valid((const unsigned char *)v, vn))
                return 0;
            *hit = 1;
            return pack_str(out, v, vn) < 0 ? -1 : 1;
        }
    }
    if (!is_canonical(k, n))
        return 0;
    *hit = 0;
    return 2; /* a canonical miss: the caller answers it */
}

/* ------------------------------------------------------------ counters */

static inline double
now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Count one request's handling time: the first bucket whose bound is >= it
 * ("le"), as bisect_left over the bounds does. */
static inline void
observe(double seconds)
{
    int i = 0;
    while (i < st_nbounds && st_bounds[i] < seconds)
        i++;
    st_buckets[i]++;
    st_seconds += seconds;
}

static PyObject *
native_take_stats(PyObject *self, PyObject *unused)
{
    PyObject *requests = PyList_New(n_requests), *keys = PyList_New(n_key_outcomes),
             *buckets = PyList_New(st_nbounds + 1);
    if (requests == NULL || keys == NULL || buckets == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n_requests; i++)
        PyList_SET_ITEM(requests, i, PyLong_FromUnsignedLongLong(st_requests[i]));
    for (Py_ssize_t i = 0; i < n_key_outcomes; i++)
        PyList_SET_ITEM(keys, i, PyLong_FromUnsignedLongLong(st_keys[i]));
    for (int i = 0; i <= st_nbounds; i++)
        PyList_SET_ITEM(buckets, i, PyLong_FromUnsignedLongLong(st_buckets[i]));
    PyObject *result = Py_BuildValue("(NNNd)", requests, keys, buckets, st_seconds);
    memset(st_requests, 0, sizeof st_requests);
    memset(st_keys, 0, sizeof st_keys);
    memset(st_buckets, 0, sizeof st_buckets);
    st_seconds = 0;
    return result;
fail:
    Py_XDECREF(requests);
    Py_XDECREF(keys);
    Py_XDECREF(buckets);
    return NULL;
}

/* ------------------------------------------------------------ answering */

/* A msgpack str made of three pieces, header sized for all of them. */
static int
pack_str3(buf_t *b, const name_t *before, const char *middle, size_t n, const name_t *after)
{
    size_t total = before->n + n + after->n;
    int rc;
    if (total < 32)
        rc = buf_byte(b, (unsigned char)(0xa0 | total));
    else if (total < 256)
        rc = put_be(b, 0xd9, total, 1);
    else if (total < 65536)
        rc = put_be(b, 0xda, total, 2);
    else
        rc = put_be(b, 0xdb, total, 4);
    if (rc < 0 || buf_put(b, before->s, before->n) < 0 || buf_put(b, middle, n) < 0)
        return -1;
    return buf_put(b, after->s, after->n);
}

/* The reply for a parsed request in *out: 1 done, 0 Python must answer, -1 error. */
static int
answer(Lookup *l, const req_t *q, buf_t *out)
{
    out->len = 0;
    if (q->op == OP_GET) {
        /* {id: id, value: v} or {id: id, error: not_found, message: "key K not found"} */
        size_t mark;
        if (buf_byte(out, 0x82) < 0 || pack_name(out, &F_ID) < 0 || pack_uint(out, q->id) < 0)
            return -1;
        mark = out->len;
        if (pack_name(out, &F_VALUE) < 0)
            return -1;
        int hit = 0;
        int rc = pack_one(l, out, q->key, q->key_len, &hit);
        if (rc <= 0)
            return rc;
        if (rc == 1) {
            st_requests[r_get_found]++;
            return 1;
        }
        out->len = mark;
        out->data[0] = (char)0x83;
        /* The key is canonical here: the message names it as the handler does. */
        if (pack_name(out, &F_ERROR) < 0 || pack_name(out, &NOT_FOUND_CODE) < 0 || pack_name(out, &F_MESSAGE) < 0 ||
            pack_str3(out, &NOT_FOUND_BEFORE, q->key, q->key_len, &NOT_FOUND_AFTER) < 0)
            return -1;
        st_requests[r_get_not_found]++;
        return 1;
    }
    /* mget: {id: id, values: [...]} */
    if (buf_byte(out, 0x82) < 0 || pack_name(out, &F_ID) < 0 || pack_uint(out, q->id) < 0 ||
        pack_name(out, &F_VALUES) < 0 || pack_array_header(out, q->nkeys) < 0)
        return -1;
    rd_t r = {q->keys, q->keys_end};
    unsigned long long found = 0, missing = 0;
    for (size_t i = 0; i < q->nkeys; i++) {
        const char *k;
        size_t n;
        read_str(&r, &k, &n); /* checked by parse_request */
        int hit = 0;
        int rc = pack_one(l, out, k, n, &hit);
        if (rc <= 0)
            return rc;
        if (rc == 2) {
            if (buf_byte(out, 0xc0) < 0)
                return -1;
            missing++;
        }
        else
            found++;
    }
    st_requests[missing ? r_mget_not_found : r_mget_found]++;
    st_keys[k_found] += found;
    st_keys[k_not_found] += missing;
    return 1;
}

/* Hand a message to the Python handler: its frames as bytes; send what it
 * returns (a list of frames, or None). 0 done, -1 error (raised). */
static int
fall_back(void *sock, PyObject *handler, zmsg_t *route, zmsg_t *body, int more, int *dropped)
{
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        return -1;
    zmsg_t *first[2] = {route, body};
    for (int i = 0; i < 2; i++) {
        PyObject *b = PyBytes_FromStringAndSize(z_msg_data(first[i]), (Py_ssize_t)z_msg_size(first[i]));
        if (b == NULL || PyList_Append(frames, b) < 0) {
            Py_XDECREF(b);
            Py_DECREF(frames);
            return -1;
        }
        Py_DECREF(b);
    }
    while (more) { /* the rest of a many-frame message: refused by the handler */
        zmsg_t extra;
        z_msg_init(&extra);
        if (z_msg_recv(&extra, sock, 0) < 0) {
            z_msg_close(&extra);
            break;
        }
        more = z_msg_more(&extra);
        PyObject *b = PyBytes_FromStringAndSize(z_msg_data(&extra), (Py_ssize_t)z_msg_size(&extra));
        z_msg_close(&extra);
        if (b == NULL || PyList_Append(frames, b) < 0) {
            Py_XDECREF(b);
            Py_DECREF(frames);
            return -1;
        }
        Py_DECREF(b);
    }
    PyObject *reply = PyObject_CallFunctionObjArgs(handler, frames, NULL);
    Py_DECREF(frames);
    if (reply == NULL)
        return -1;
    if (reply == Py_None) {
        Py_DECREF(reply);
        return 0;
    }
    if (!PyList_Check(reply)) {
        Py_DECREF(reply);
        PyErr_SetString(PyExc_TypeError, "the handler must return a list of frames or None");
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(reply);
    for (Py_ssize_t i = 0; i < count; i++) {
        char *data;
        Py_ssize_t size;
        if (PyBytes_AsStringAndSize(PyList_GET_ITEM(reply, i), &data, &size) < 0) {
            Py_DECREF(reply);
            return -1;
        }
        if (z_send(sock, data, (size_t)size, i + 1 < count ? Z_SNDMORE : 0) < 0) {
            (*dropped)++;
            break;
        }
    }
    Py_DECREF(reply);
    return 0;
}

/* serve(socket_address, lookup, handler, limit, dontwait) -> (answered, dropped, interrupted)
 *
 * Answer up to `limit` messages from the socket: return when a receive finds
 * nothing (its RCVTIMEO ran out, or at once with dontwait), when a signal
 * interrupts it (interrupted is then true: Python runs its handlers and looks
 * at its stop flag), or after `limit`. The GIL is released while waiting. */
static PyObject *
native_serve(PyObject *self, PyObject *args)
{
    unsigned long long address;
    PyObject *lookup_obj, *handler;
    Py_ssize_t limit;
    int dontwait;
    if (!PyArg_ParseTuple(args, "KO!Onp", &address, &LookupType, &lookup_obj, &handler, &limit, &dontwait))
        return NULL;
    if (!zmq_ready || !configured) {
        PyErr_SetString(PyExc_RuntimeError, "rokv.worker._native: init() and configure() must be called first");
        return NULL;
    }
    void *sock = (void *)(uintptr_t)address;
    Lookup *l = (Lookup *)lookup_obj;
    buf_t out = {NULL, 0, 0};
    Py_ssize_t answered = 0;
    int dropped = 0, interrupted = 0, failed = 0;
    int flags = dontwait ? Z_DONTWAIT : 0;
    while (answered < limit) {
        zmsg_t route, body;
        z_msg_init(&route);
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = z_msg_recv(&route, sock, flags);
        Py_END_ALLOW_THREADS
        if (rc < 0) {
            int e = z_errno();
            z_msg_close(&route);
            if (e == EINTR)
                interrupted = 1;
            else if (e != EAGAIN) {
                PyErr_Format(PyExc_OSError, "receive failed: errno %d", e);
                failed = 1;
            }
            break;
        }
        /* The broker's ROUTER puts the client's routing id first; a body follows. */
        z_msg_init(&body);
        if (!z_msg_more(&route) || z_msg_recv(&body, sock, 0) < 0) {
            /* one frame: nothing to address a reply to; the handler logs and drops it */
            PyObject *frames = Py_BuildValue("[y#]", (const char *)z_msg_data(&route), (Py_ssize_t)z_msg_size(&route));
            z_msg_close(&route);
            z_msg_close(&body);
            PyObject *ignored = frames ? PyObject_CallFunctionObjArgs(handler, frames, NULL) : NULL;
            Py_XDECREF(frames);
            if (ignored == NULL) {
                failed = 1;
                break;
            }
            Py_DECREF(ignored);
            continue;
        }
        answered++;
        int more = z_msg_more(&body);
        req_t q = {0};
        int done = 0;
        double started = now_seconds();
        if (!more && parse_request(z_msg_data(&body), z_msg_size(&body), &q)) {
            done = answer(l, &q, &out);
            if (done > 0)
                observe(now_seconds() - started);
            if (done < 0) {
                z_msg_close(&route);
                z_msg_close(&body);
                failed = 1;
                break;
            }
        }
        if (done) {
            /* The route goes back as received; the reply is copied by libzmq. */
            if (z_msg_send(&route, sock, Z_SNDMORE) < 0 || z_send(sock, out.data, out.len, 0) < 0)
                dropped++;
            z_msg_close(&route);
            z_msg_close(&body);
            continue;
        }
        rc = fall_back(sock, handler, &route, &body, more, &dropped);
        z_msg_close(&route);
        z_msg_close(&body);
        if (rc < 0) {
            failed = 1;
            break;
        }
    }
    PyMem_Free(out.data);
    if (failed)
        return NULL;
    return Py_BuildValue("(nii)", answered, dropped, interrupted);
}

/* answer(lookup, body) -> bytes | None: the compiled answer to one request
 * body, or None where Python answers. For tests, which compare it with the
 * Python handler's. */
static PyObject *
native_answer(PyObject *self, PyObject *args)
{
    PyObject *lookup_obj;
    Py_buffer body;
    if (!PyArg_ParseTuple(args, "O!y*", &LookupType, &lookup_obj, &body))
        return NULL;
    if (!configured) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_RuntimeError, "rokv.worker._native.configure() was not called");
        return NULL;
    }
    req_t q = {0};
    buf_t out = {NULL, 0, 0};
    PyObject *result = NULL;
    if (!parse_request(body.buf, (size_t)body.len, &q)) {
        result = Py_None;
        Py_INCREF(result);
    }
    else {
        int rc = answer((Lookup *)lookup_obj, &q, &out);
        if (rc > 0)
            result = PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.len);
        else if (rc == 0) {
            result = Py_None;
            Py_INCREF(result);
        }
    }
    PyMem_Free(out.data);
    PyBuffer_Release(&body);
    return result;
}

/* ------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"init", native_init, METH_O, "init(libzmq_path): find libzmq's functions in the library pyzmq loaded."},
    {"dict_lookup", native_dict_lookup, METH_O, "dict_lookup(dict) -> Lookup"},
    {"store_lookup", native_store_lookup, METH_VARARGS,
     "store_lookup(mapping, table, keys, offsets, values, n, bits) -> Lookup over a .rokv mapping"},
    {"serve", native_serve, METH_VARARGS,
     "serve(socket_address, lookup, handler, limit, dontwait) -> (answered, dropped, interrupted)"},
    {"answer", native_answer, METH_VARARGS, "answer(lookup, body) -> bytes or None (Python answers)"},
    {"configure", native_configure, METH_O,
     "configure(constants): the protocol's constants and the counters' layout (rokv.worker.native.constants())"},
    {"config", native_config, METH_NOARGS, "config() -> the constants configure() was given"},
    {"take_stats", native_take_stats, METH_NOARGS,
     "take_stats() -> (requests, mget_keys, buckets, seconds) since the last call (see rokv.server.stats)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "rokv.worker._native", "The worker's compiled serving loop (see rokv.worker.native).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (PyType_Ready(&LookupType) < 0)
        return NULL;
    utf8_dfa_init();
    return PyModule_Create(&module);
}
