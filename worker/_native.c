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
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

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
/* zmq_pollitem_t on POSIX: socket, fd, events, revents. */
typedef struct {
    void *socket;
    int fd;
    short events;
    short revents;
} zpollitem_t;
static int (*z_poll)(zpollitem_t *, int, long);
static int zmq_ready = 0;

#define Z_DONTWAIT 1
#define Z_SNDMORE 2
#define Z_POLLIN 1

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
    SYM(z_poll, "zmq_poll");
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

static Py_ssize_t serve_socket(void *sock, Lookup *l, PyObject *handler, Py_ssize_t limit, int flags, buf_t *outp,
                               int *droppedp, int *interruptedp);

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
    buf_t out = {NULL, 0, 0};
    int dropped = 0, interrupted = 0;
    Py_ssize_t answered = serve_socket((void *)(uintptr_t)address, (Lookup *)lookup_obj, handler, limit,
                                       dontwait ? Z_DONTWAIT : 0, &out, &dropped, &interrupted);
    PyMem_Free(out.data);
    if (answered < 0)
        return NULL;
    return Py_BuildValue("(nii)", answered, dropped, interrupted);
}

/* Answer up to `limit` messages from one socket (see serve()): the count
 * answered, or -1 with an exception set. `out` is the reply buffer, reused. */
static Py_ssize_t
serve_socket(void *sock, Lookup *l, PyObject *handler, Py_ssize_t limit, int flags, buf_t *outp, int *droppedp,
             int *interruptedp)
{
    buf_t out = *outp;
    Py_ssize_t answered = 0;
    int dropped = 0, interrupted = 0, failed = 0;
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
    *outp = out;
    *droppedp += dropped;
    *interruptedp |= interrupted;
    return failed ? -1 : answered;
}

/* ------------------------------------------------------------ the direct endpoint, without libzmq
 *
 * A worker's direct endpoint served by this loop itself: a listening TCP
 * socket (made and bound by Python, rokv.worker.direct) and its connections,
 * each speaking ZMTP 3 (RFC 23/37, NULL security) as a libzmq ROUTER does, so
 * that no libzmq socket, and no libzmq I/O thread, is on the direct path. Its
 * descriptors are polled in the same zmq_poll as the brokers' sockets.
 *
 * Per connection: our greeting and READY (Socket-Type ROUTER) go out at once;
 * the peer's greeting (signature, major version >= 3, mechanism NULL) and
 * READY (Socket-Type DEALER, REQ or ROUTER) are checked; PINGs are answered
 * with PONGs, other commands ignored; a one-frame message is a request,
 * answered here or by the Python handler (given [route, body], route made up
 * per connection as libzmq makes routing ids); a many-frame message goes to
 * the handler whole. A frame over the maximum message size, or anything that
 * breaks the protocol, closes that connection only.
 *
 * Memory per connection is bounded: the input buffer holds at most one frame
 * being received plus one read; requests are not read while the output
 * waiting for the peer exceeds OUT_HIGH (the kernel's buffers then push back
 * on the client); a many-frame message keeps at most max_msg bytes of its
 * frames (the handler refuses it by its frame count alone).
 */

#define Z_POLLOUT 2
#define Z_POLLERR 4
#define READ_SIZE 65536
#define OUT_HIGH (256 * 1024)
#define ACCEPTS_PER_ROUND 64
#define ZMTP_GREETING 64
#define F_MORE 0x01
#define F_LONG 0x02
#define F_COMMAND 0x04
#define HANDSHAKE_SECONDS 30.0 /* libzmq's default ZMQ_HANDSHAKE_IVL */

enum { C_GREETING, C_READY, C_OPEN };

typedef struct {
    int fd;
    int state;
    unsigned char *in; /* received, not yet taken: in[at .. len) */
    size_t in_at, in_len, in_cap;
    buf_t out; /* to send: out.data[out_at .. out.len) */
    size_t out_at;
    unsigned char route[5];
    PyObject *parts;    /* a many-frame message being received: [route, frames...] */
    size_t parts_bytes; /* of the frames kept in parts */
    int closing;        /* close once the output went (after an ERROR command) */
    double handshake_by; /* closed when not through the handshake by then, as libzmq's ZMQ_HANDSHAKE_IVL */
    char peer[64];
} conn_t;

typedef struct {
    PyObject_HEAD
    int listen_fd;
    uint64_t max_msg;
    size_t max_conns;
    conn_t **conns;
    size_t nconns, conns_cap;
    zpollitem_t *items;
    size_t items_cap;
    uint32_t next_route;
    unsigned long long accepted, closed, refused;
    PyObject *on_event; /* on_event(kind, peer, detail): "accepted", "closed", "refused" */
    double next_sweep;  /* when to look for connections stuck in the handshake */
    double accept_from; /* after an accept failed for want of descriptors or memory: not polled till then */
    int open;
} Endpoint;

static PyTypeObject EndpointType;

/* Our greeting (ZMTP 3.1, NULL, as-server 0) and READY (Socket-Type ROUTER,
 * an empty Identity), as libzmq 4.3 sends them. */
static const unsigned char HELLO[] = {
    0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 1, 'N', 'U', 'L', 'L', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* command, 41 bytes */
    F_COMMAND, 41, 5, 'R', 'E', 'A', 'D', 'Y', 11, 'S', 'o', 'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e', 0, 0, 0,
    6, 'R', 'O', 'U', 'T', 'E', 'R', 8, 'I', 'd', 'e', 'n', 't', 'i', 't', 'y', 0, 0, 0, 0};

static void
event(Endpoint *e, const char *kind, const char *peer, const char *detail)
{
    if (e->on_event == NULL || e->on_event == Py_None)
        return;
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb); /* never lose an error being raised */
    PyObject *r = PyObject_CallFunction(e->on_event, "sss", kind, peer, detail);
    if (r == NULL)
        PyErr_WriteUnraisable(e->on_event);
    Py_XDECREF(r);
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

static void
conn_close(Endpoint *e, conn_t *c, const char *why)
{
    if (c->fd < 0)
        return;
    close(c->fd);
    c->fd = -1;
    e->closed++;
    event(e, "closed", c->peer, why);
    PyMem_Free(c->in);
    c->in = NULL;
    c->in_at = c->in_len = c->in_cap = 0;
    PyMem_Free(c->out.data);
    c->out.data = NULL;
    c->out.len = c->out.cap = c->out_at = 0;
    Py_CLEAR(c->parts);
}

/* Drop closed connections from the table. */
static void
conns_compact(Endpoint *e)
{
    size_t j = 0;
    for (size_t i = 0; i < e->nconns; i++) {
        if (e->conns[i]->fd >= 0)
            e->conns[j++] = e->conns[i];
        else
            PyMem_Free(e->conns[i]);
    }
    e->nconns = j;
}

static inline size_t
out_pending(const conn_t *c)
{
    return c->out.len - c->out_at;
}

/* Send what waits, without blocking: 0, or -1 when the connection broke (closed). */
static int
conn_flush(Endpoint *e, conn_t *c)
{
    while (out_pending(c) > 0) {
        ssize_t n = send(c->fd, c->out.data + c->out_at, out_pending(c), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_at += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_close(e, c, n < 0 ? strerror(errno) : "send failed");
        return -1;
    }
    if (c->out_at == c->out.len)
        c->out_at = c->out.len = 0;
    else if (c->out_at > (1 << 16) && c->out_at * 2 > c->out.len) { /* keep the buffer's front near its start */
        memmove(c->out.data, c->out.data + c->out_at, out_pending(c));
        c->out.len -= c->out_at;
        c->out_at = 0;
    }
    if (c->closing && out_pending(c) == 0) {
        conn_close(e, c, "refused");
        return -1;
    }
    return 0;
}

/* A frame's header and size into the output. */
static int
put_frame_head(buf_t *b, unsigned char flags, size_t size)
{
    if (size < 256) {
        unsigned char h[2] = {flags, (unsigned char)size};
        return buf_put(b, h, 2);
    }
    return put_be(b, flags | F_LONG, (uint64_t)size, 8);
}

static int
put_frame(buf_t *b, unsigned char flags, const void *data, size_t size)
{
    if (put_frame_head(b, flags, size) < 0)
        return -1;
    return buf_put(b, data, size);
}

/* Queue an ERROR command (ZMTP 3: reason up to 255 bytes) and close once it went. */
static int
conn_refuse(Endpoint *e, conn_t *c, const char *reason)
{
    unsigned char body[6 + 256];
    size_t n = strlen(reason);
    if (n > 255)
        n = 255;
    memcpy(body, "\x05" "ERROR", 6);
    body[6] = (unsigned char)n;
    memcpy(body + 7, reason, n);
    if (put_frame(&c->out, F_COMMAND, body, 7 + n) < 0) {
        PyErr_Clear();
        conn_close(e, c, reason);
        return -1;
    }
    c->closing = 1;
    conn_flush(e, c);
    return -1;
}

/* The whole frame at the input's front, if there is one: 1 (flags, body,
 * size set, the frame taken off), 0 when more must be read, -1 when it is
 * over the size limit. */
static int
take_frame(Endpoint *e, conn_t *c, unsigned char *flags, const unsigned char **body, size_t *size)
{
    size_t have = c->in_len - c->in_at;
    const unsigned char *p = c->in + c->in_at;
    if (have < 2)
        return 0;
    uint64_t n;
    size_t head;
    if (p[0] & F_LONG) {
        if (have < 9)
            return 0;
        n = 0;
        for (int i = 1; i <= 8; i++)
            n = (n << 8) | p[i];
        head = 9;
    }
    else {
        n = p[1];
        head = 2;
    }
    if (n > e->max_msg) /* checked before any arithmetic: max_msg is far below SIZE_MAX */
        return -1;
    if (have - head < n)
        return 0;
    *flags = p[0];
    *body = p + head;
    *size = (size_t)n;
    c->in_at += head + (size_t)n;
    return 1;
}

/* Does the input's front hold a whole frame (or enough to act on in the handshake)? */
static int
has_frame(const Endpoint *e, const conn_t *c)
{
    size_t have = c->in_len - c->in_at;
    const unsigned char *p = c->in + c->in_at;
    if (c->state == C_GREETING)
        return have >= ZMTP_GREETING || (have >= 1 && p[0] != 0xff) || (have >= 10 && p[9] != 0x7f) ||
               (have >= 11 && p[10] < 3);
    if (have < 2)
        return 0;
    if (!(p[0] & F_LONG))
        return have - 2 >= p[1];
    if (have < 9)
        return 0;
    uint64_t n = 0;
    for (int i = 1; i <= 8; i++)
        n = (n << 8) | p[i];
    return n > e->max_msg || have - 9 >= n;
}

/* Is the peer's READY acceptable? 1 yes, 0 a socket type a ROUTER refuses, -1 malformed. */
static int
check_ready(const unsigned char *body, size_t size)
{
    if (size < 6 || memcmp(body, "\x05" "READY", 6) != 0)
        return -1;
    size_t at = 6;
    int type_ok = -2;
    while (at < size) {
        size_t name = body[at++];
        if (size - at < name + 4)
            return -1;
        const unsigned char *key = body + at;
        at += name;
        uint32_t len = ((uint32_t)body[at] << 24) | ((uint32_t)body[at + 1] << 16) | ((uint32_t)body[at + 2] << 8) |
                       body[at + 3];
        at += 4;
        if (size - at < len)
            return -1;
        const unsigned char *value = body + at;
        at += len;
        if (name == 11 && strncasecmp((const char *)key, "Socket-Type", 11) == 0)
            type_ok = (len == 6 && (memcmp(value, "DEALER", 6) == 0 || memcmp(value, "ROUTER", 6) == 0)) ||
                      (len == 3 && memcmp(value, "REQ", 3) == 0);
    }
    return type_ok == -2 ? -1 : type_ok;
}

static PyObject *
route_bytes(const conn_t *c)
{
    return PyBytes_FromStringAndSize((const char *)c->route, sizeof c->route);
}

/* Hand [route, frames...] to the Python handler and queue its reply frames
 * (after the route) on the connection. 0, or -1 with an exception set. */
static int
direct_fall_back(conn_t *c, PyObject *handler, PyObject *frames)
{
    PyObject *reply = PyObject_CallFunctionObjArgs(handler, frames, NULL);
    if (reply == NULL)
        return -1;
    int rc = 0;
    if (reply != Py_None) {
        if (!PyList_Check(reply)) {
            PyErr_SetString(PyExc_TypeError, "the handler must return a list of frames or None");
            rc = -1;
        }
        else {
            Py_ssize_t count = PyList_GET_SIZE(reply);
            for (Py_ssize_t i = 1; i < count && rc == 0; i++) { /* frame 0 is the route: this connection */
                char *data;
                Py_ssize_t size;
                if (PyBytes_AsStringAndSize(PyList_GET_ITEM(reply, i), &data, &size) < 0 ||
                    put_frame(&c->out, i + 1 < count ? F_MORE : 0, data, (size_t)size) < 0)
                    rc = -1;
            }
        }
    }
    Py_DECREF(reply);
    return rc;
}

/* A command after the handshake: PING gets a PONG with its context; the rest is ignored. */
static int
on_command(conn_t *c, const unsigned char *body, size_t size)
{
    if (size >= 7 && memcmp(body, "\x04" "PING", 5) == 0) {
        size_t context = size - 7;
        if (context > 16)
            context = 16;
        unsigned char pong[5 + 16];
        memcpy(pong, "\x04" "PONG", 5);
        memcpy(pong + 5, body + 7, context);
        return put_frame(&c->out, F_COMMAND, pong, 5 + context);
    }
    return 0;
}

/* Take what the connection's input holds: the handshake, commands, and up
 * to `burst` messages, while the output is below OUT_HIGH. The messages
 * taken, or -1 with an exception set (the loop's own failure: a closed
 * connection is not one). `scratch` is the reply buffer. */
static Py_ssize_t
conn_work(Endpoint *e, conn_t *c, Lookup *l, PyObject *handler, Py_ssize_t burst, buf_t *scratch)
{
    Py_ssize_t answered = 0;
    while (c->fd >= 0 && !c->closing && answered < burst && out_pending(c) < OUT_HIGH) {
        if (c->state == C_GREETING) {
            size_t have = c->in_len - c->in_at;
            const unsigned char *p = c->in + c->in_at;
            if (!has_frame(e, c))
                break;
            if (p[0] != 0xff || (have >= 10 && p[9] != 0x7f) || (have >= 11 && p[10] < 3)) {
                conn_close(e, c, "not a ZMTP 3 peer");
                break;
            }
            static const char null_mech[20] = "NULL";
            if (memcmp(p + 12, null_mech, 20) != 0) {
                conn_refuse(e, c, "invalid mechanism");
                break;
            }
            c->in_at += ZMTP_GREETING;
            c->state = C_READY;
            continue;
        }
        unsigned char flags;
        const unsigned char *body;
        size_t size;
        int rc = take_frame(e, c, &flags, &body, &size);
        if (rc == 0)
            break;
        if (rc < 0) {
            conn_close(e, c, "a frame over the maximum message size");
            break;
        }
        if (flags & F_COMMAND) {
            if (flags & F_MORE) {
                conn_close(e, c, "a command with more frames");
                break;
            }
            if (c->state == C_READY) {
                if (size >= 6 && memcmp(body, "\x05" "ERROR", 6) == 0) {
                    conn_close(e, c, "the peer sent ERROR");
                    break;
                }
                int ok = check_ready(body, size);
                if (ok < 0) {
                    conn_refuse(e, c, "malformed READY");
                    break;
                }
                if (ok == 0) {
                    conn_refuse(e, c, "invalid socket type");
                    break;
                }
                c->state = C_OPEN;
                continue;
            }
            if (on_command(c, body, size) < 0)
                return -1;
            continue;
        }
        if (c->state != C_OPEN) {
            conn_close(e, c, "a message before READY");
            break;
        }
        if ((flags & F_MORE) || c->parts != NULL) {
            /* a many-frame message: the handler refuses it, by its frame count */
            if (c->parts == NULL) {
                PyObject *route = route_bytes(c);
                c->parts = route ? PyList_New(0) : NULL;
                if (c->parts == NULL || PyList_Append(c->parts, route) < 0) {
                    Py_XDECREF(route);
                    return -1;
                }
                Py_DECREF(route);
                c->parts_bytes = 0;
            }
            int keep = size <= e->max_msg - c->parts_bytes;
            PyObject *b = PyBytes_FromStringAndSize(keep ? (const char *)body : "", keep ? (Py_ssize_t)size : 0);
            if (b == NULL || PyList_Append(c->parts, b) < 0) {
                Py_XDECREF(b);
                return -1;
            }
            Py_DECREF(b);
            if (keep)
                c->parts_bytes += size;
            if (flags & F_MORE)
                continue;
            PyObject *frames = c->parts;
            c->parts = NULL;
            answered++;
            rc = direct_fall_back(c, handler, frames);
            Py_DECREF(frames);
            if (rc < 0)
                return -1;
            continue;
        }
        answered++;
        req_t q = {0};
        int done = 0;
        double started = now_seconds();
        if (parse_request(body, size, &q)) {
            done = answer(l, &q, scratch);
            if (done < 0)
                return -1;
            if (done > 0)
                observe(now_seconds() - started);
        }
        if (done) {
            if (put_frame(&c->out, 0, scratch->data, scratch->len) < 0)
                return -1;
            continue;
        }
        PyObject *frames = Py_BuildValue("[Ny#]", route_bytes(c), (const char *)body, (Py_ssize_t)size);
        if (frames == NULL)
            return -1;
        rc = direct_fall_back(c, handler, frames);
        Py_DECREF(frames);
        if (rc < 0)
            return -1;
    }
    /* The input's front back to the start, so a frame fits in max_msg + header + a read. */
    if (c->fd >= 0) {
        if (c->in_at == c->in_len)
            c->in_at = c->in_len = 0;
        else if (c->in_at > 0 && !has_frame(e, c)) {
            memmove(c->in, c->in + c->in_at, c->in_len - c->in_at);
            c->in_len -= c->in_at;
            c->in_at = 0;
        }
    }
    return answered;
}

/* One read into the input, when the front holds no whole frame: 1 read
 * something, 0 nothing (EAGAIN), -1 closed (or failed: the connection is
 * closed then; an exception is set only for memory). */
static int
conn_read(Endpoint *e, conn_t *c)
{
    if (c->in_len + READ_SIZE > c->in_cap) {
        size_t cap = c->in_len + READ_SIZE; /* in_len < max_msg + 9 + READ_SIZE: a frame not yet whole */
        unsigned char *in = PyMem_Realloc(c->in, cap);
        if (in == NULL) {
            conn_close(e, c, "out of memory");
            return -1;
        }
        c->in = in;
        c->in_cap = cap;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->in_len, READ_SIZE, MSG_DONTWAIT);
        if (n > 0) {
            c->in_len += (size_t)n;
            return 1;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        conn_close(e, c, n == 0 ? "closed by the peer" : strerror(errno));
        return -1;
    }
}

static void
describe_peer(const struct sockaddr_storage *addr, char *out, size_t size)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(out, size, "%s:%d", host, port);
    }
    else if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(out, size, "[%s]:%d", host, port);
    }
    else
        snprintf(out, size, "?");
}

/* Take the connections waiting on the listening socket (some per round). */
static void
endpoint_accept(Endpoint *e)
{
    for (int i = 0; i < ACCEPTS_PER_ROUND; i++) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        int fd = accept4(e->listen_fd, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                /* EMFILE and the like: logged, and the listening socket left alone for a while, since it
                 * stays readable and would otherwise make every poll return at once */
                event(e, "failed", "", strerror(errno));
                e->accept_from = now_seconds() + 0.1;
            }
            return;
        }
        char peer[64];
        describe_peer(&addr, peer, sizeof peer);
        if (e->nconns >= e->max_conns) {
            close(fd);
            e->refused++;
            event(e, "refused", peer, "too many connections");
            continue;
        }
        if (e->nconns == e->conns_cap) {
            size_t cap = e->conns_cap ? e->conns_cap * 2 : 64;
            conn_t **conns = PyMem_Realloc(e->conns, cap * sizeof *conns);
            if (conns == NULL) {
                close(fd);
                e->refused++;
                event(e, "refused", peer, "out of memory");
                continue;
            }
            e->conns = conns;
            e->conns_cap = cap;
        }
        conn_t *c = PyMem_Calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            e->refused++;
            event(e, "refused", peer, "out of memory");
            continue;
        }
        int one = 1, idle = 5, interval = 1, probes = 3;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* a client host that vanished (no FIN, no RST) is dropped in about 8 s */
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
        c->fd = fd;
        c->state = C_GREETING;
        c->handshake_by = now_seconds() + HANDSHAKE_SECONDS;
        memcpy(c->peer, peer, sizeof c->peer);
        /* a routing id as libzmq makes one: a zero byte, then a 32-bit counter */
        uint32_t r = e->next_route++;
        c->route[0] = 0;
        c->route[1] = (unsigned char)(r >> 24);
        c->route[2] = (unsigned char)(r >> 16);
        c->route[3] = (unsigned char)(r >> 8);
        c->route[4] = (unsigned char)r;
        e->conns[e->nconns++] = c;
        e->accepted++;
        event(e, "accepted", peer, "");
        if (buf_put(&c->out, HELLO, sizeof HELLO) < 0) {
            PyErr_Clear();
            conn_close(e, c, "out of memory");
            continue;
        }
        conn_flush(e, c);
    }
}

/* Poll events for a connection: input unless backpressure (or closing), output when some waits. */
static short
conn_events(const conn_t *c)
{
    short ev = 0;
    if (!c->closing && out_pending(c) < OUT_HIGH)
        ev |= Z_POLLIN;
    if (out_pending(c) > 0)
        ev |= Z_POLLOUT;
    return ev;
}

/* Does a connection hold input to work on without waiting? */
static int
conn_ready(const Endpoint *e, const conn_t *c)
{
    return c->fd >= 0 && !c->closing && out_pending(c) < OUT_HIGH && has_frame(e, c);
}

/* After the poll: accept, read, answer and write for every connection with
 * something to do. The messages taken, or -1 with an exception set. */
static Py_ssize_t
endpoint_work(Endpoint *e, zpollitem_t *items, Lookup *l, PyObject *handler, Py_ssize_t burst, buf_t *scratch)
{
    Py_ssize_t answered = 0, failed = 0;
    size_t n = e->nconns; /* the connections polled: those accepted below wait for the next poll */
    if (items[0].revents & (Z_POLLIN | Z_POLLERR))
        endpoint_accept(e);
    for (size_t i = 0; i < n; i++) {
        conn_t *c = e->conns[i];
        short rev = items[1 + i].revents;
        if (c->fd < 0)
            continue;
        if (rev & (Z_POLLOUT | Z_POLLERR)) {
            if (conn_flush(e, c) < 0)
                continue;
            if ((rev & Z_POLLERR) && !(items[1 + i].events & Z_POLLIN)) {
                int err = 0;
                socklen_t len = sizeof err;
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err) {
                    conn_close(e, c, strerror(err));
                    continue;
                }
            }
        }
        if ((rev & (Z_POLLIN | Z_POLLERR)) && (items[1 + i].events & Z_POLLIN) && !has_frame(e, c)) {
            if (conn_read(e, c) < 0) {
                if (PyErr_Occurred()) /* never: conn_read closes on failure */
                    PyErr_Clear();
                continue;
            }
        }
        if (conn_ready(e, c)) {
            Py_ssize_t got = conn_work(e, c, l, handler, burst, scratch);
            if (got < 0) {
                failed = 1;
                break;
            }
            answered += got;
            if (c->fd >= 0)
                conn_flush(e, c);
        }
    }
    double now = now_seconds();
    if (now >= e->next_sweep) { /* once a second: connections that never finished their handshake */
        e->next_sweep = now + 1.0;
        for (size_t i = 0; i < e->nconns; i++)
            if (e->conns[i]->state != C_OPEN && now > e->conns[i]->handshake_by)
                conn_close(e, e->conns[i], "no handshake in time");
    }
    conns_compact(e);
    return failed ? -1 : answered;
}

/* Endpoint(listen_fd, max_message_size, max_connections, on_event) */
static PyObject *
endpoint_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    int fd;
    long long max_msg;
    Py_ssize_t max_conns;
    PyObject *on_event;
    if (!PyArg_ParseTuple(args, "iLnO", &fd, &max_msg, &max_conns, &on_event))
        return NULL;
    if (fd < 0 || max_msg < 0 || max_msg > (1LL << 40) || max_conns < 1 || max_conns > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "Endpoint: a listening fd, a message size from 0 to 2**40 and 1 to 2**20 "
                                          "connections");
        return NULL;
    }
    Endpoint *e = (Endpoint *)type->tp_alloc(type, 0);
    if (e == NULL)
        return NULL;
    e->listen_fd = fd;
    e->max_msg = (uint64_t)max_msg;
    e->max_conns = (size_t)max_conns;
    Py_INCREF(on_event);
    e->on_event = on_event;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    e->next_route = (uint32_t)(ts.tv_nsec ^ (ts.tv_sec << 10) ^ getpid()); /* libzmq starts at a random id */
    e->open = 1;
    return (PyObject *)e;
}

/* close(linger_ms): send what waits for up to linger_ms, then close every
 * connection. The listening socket is Python's, closed by it. */
static PyObject *
endpoint_close(Endpoint *e, PyObject *arg)
{
    long linger = PyLong_AsLong(arg);
    if (linger == -1 && PyErr_Occurred())
        return NULL;
    if (e->open && e->nconns > 0) {
        double deadline = now_seconds() + linger / 1000.0;
        for (;;) {
            struct pollfd fds[256];
            int k = 0;
            for (size_t i = 0; i < e->nconns && k < 256; i++) {
                conn_t *c = e->conns[i];
                if (c->fd >= 0 && out_pending(c) > 0) {
                    fds[k].fd = c->fd;
                    fds[k].events = POLLOUT;
                    k++;
                }
            }
            double left = deadline - now_seconds();
            if (k == 0 || left <= 0)
                break;
            int rc;
            Py_BEGIN_ALLOW_THREADS
            rc = poll(fds, (nfds_t)k, (int)(left * 1000) + 1);
            Py_END_ALLOW_THREADS
            if (rc < 0 && errno != EINTR)
                break;
            for (size_t i = 0; i < e->nconns; i++)
                if (e->conns[i]->fd >= 0 && out_pending(e->conns[i]) > 0)
                    conn_flush(e, e->conns[i]);
        }
    }
    for (size_t i = 0; i < e->nconns; i++)
        conn_close(e, e->conns[i], "the worker stops");
    conns_compact(e);
    e->open = 0;
    Py_RETURN_NONE;
}

static PyObject *
endpoint_counts(Endpoint *e, PyObject *unused)
{
    return Py_BuildValue("{s:n,s:K,s:K,s:K}", "connections", (Py_ssize_t)e->nconns, "accepted", e->accepted,
                         "closed", e->closed, "refused", e->refused);
}

static void
endpoint_dealloc(Endpoint *e)
{
    for (size_t i = 0; i < e->nconns; i++) {
        conn_t *c = e->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        PyMem_Free(c->in);
        PyMem_Free(c->out.data);
        Py_XDECREF(c->parts);
        PyMem_Free(c);
    }
    PyMem_Free(e->conns);
    PyMem_Free(e->items);
    Py_XDECREF(e->on_event);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyMethodDef endpoint_methods[] = {
    {"close", (PyCFunction)endpoint_close, METH_O,
     "close(linger_ms): send what waits for up to linger_ms, then close every connection"},
    {"counts", (PyCFunction)endpoint_counts, METH_NOARGS,
     "counts() -> {connections, accepted, closed, refused}"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EndpointType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rokv.worker._native.Endpoint",
    .tp_basicsize = sizeof(Endpoint),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Endpoint(listen_fd, max_message_size, max_connections, on_event): a direct endpoint served "
              "by serve_many without libzmq (ZMTP 3 as a ROUTER)",
    .tp_new = endpoint_new,
    .tp_dealloc = (destructor)endpoint_dealloc,
    .tp_methods = endpoint_methods,
};

/* serve_many(socket_addresses, lookup, handler, burst, timeout_ms[, endpoint]) -> (answered, dropped, interrupted)
 *
 * The loop of a worker with several sockets (one per broker, and its direct
 * endpoint): wait up to timeout_ms until a socket has messages, then answer
 * up to `burst` messages from each socket that has some, each on the socket
 * it came from, without waiting; `answered` is a list, one count per socket.
 * With `endpoint` (an Endpoint: the direct endpoint served without libzmq),
 * its listening socket and connections are polled too, each connection
 * answered up to `burst` messages a round, and its count comes last in the
 * list. Returns after one round, at the timeout (all counts 0), or at a
 * signal (interrupted). The GIL is released while waiting. */
static PyObject *
native_serve_many(PyObject *self, PyObject *args)
{
    PyObject *addresses, *lookup_obj, *handler, *endpoint_obj = Py_None;
    Py_ssize_t burst;
    int timeout_ms;
    if (!PyArg_ParseTuple(args, "O!O!Oni|O", &PyTuple_Type, &addresses, &LookupType, &lookup_obj, &handler, &burst,
                          &timeout_ms, &endpoint_obj))
        return NULL;
    if (!zmq_ready || !configured) {
        PyErr_SetString(PyExc_RuntimeError, "rokv.worker._native: init() and configure() must be called first");
        return NULL;
    }
    Endpoint *e = NULL;
    if (endpoint_obj != Py_None) {
        if (!PyObject_TypeCheck(endpoint_obj, &EndpointType)) {
            PyErr_SetString(PyExc_TypeError, "serve_many: endpoint must be an Endpoint or None");
            return NULL;
        }
        e = (Endpoint *)endpoint_obj;
        if (!e->open) {
            PyErr_SetString(PyExc_ValueError, "serve_many: the endpoint is closed");
            return NULL;
        }
    }
    Py_ssize_t n = PyTuple_GET_SIZE(addresses);
    if ((n < 1 && e == NULL) || n > 64) {
        PyErr_SetString(PyExc_ValueError, "serve_many takes 1 to 64 sockets (0 with an endpoint)");
        return NULL;
    }
    zpollitem_t stack_items[64];
    zpollitem_t *items = stack_items;
    size_t total = (size_t)n;
    if (e != NULL) {
        total += 1 + e->nconns;
        if (total > e->items_cap) {
            size_t cap = total * 2;
            zpollitem_t *grown = PyMem_Realloc(e->items, cap * sizeof *grown);
            if (grown == NULL)
                return PyErr_NoMemory();
            e->items = grown;
            e->items_cap = cap;
        }
        items = e->items;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(addresses, i));
        if (a == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        items[i].socket = (void *)(uintptr_t)a;
        items[i].fd = 0;
        items[i].events = Z_POLLIN;
        items[i].revents = 0;
    }
    if (e != NULL) {
        zpollitem_t *it = items + n;
        it[0].socket = NULL;
        it[0].fd = e->listen_fd;
        it[0].events = now_seconds() >= e->accept_from ? Z_POLLIN : 0;
        it[0].revents = 0;
        for (size_t i = 0; i < e->nconns; i++) {
            conn_t *c = e->conns[i];
            it[1 + i].socket = NULL;
            it[1 + i].fd = c->fd;
            it[1 + i].events = conn_events(c);
            it[1 + i].revents = 0;
            if (conn_ready(e, c))
                timeout_ms = 0; /* input left from the last round (its burst ran out): no waiting */
        }
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = z_poll(items, (int)total, timeout_ms);
    Py_END_ALLOW_THREADS
    int dropped = 0, interrupted = 0;
    if (rc < 0) {
        int err = z_errno();
        if (err != EINTR) {
            PyErr_Format(PyExc_OSError, "poll failed: errno %d", err);
            return NULL;
        }
        interrupted = 1;
    }
    PyObject *counts = PyList_New(n + (e != NULL));
    if (counts == NULL)
        return NULL;
    buf_t out = {NULL, 0, 0};
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t answered = 0;
        if (rc > 0 && (items[i].revents & Z_POLLIN)) {
            answered = serve_socket(items[i].socket, (Lookup *)lookup_obj, handler, burst, Z_DONTWAIT, &out, &dropped,
                                    &interrupted);
            if (answered < 0)
                goto fail;
        }
        PyObject *c = PyLong_FromSsize_t(answered);
        if (c == NULL)
            goto fail;
        PyList_SET_ITEM(counts, i, c);
    }
    if (e != NULL) {
        Py_ssize_t answered = 0;
        if (rc >= 0) {
            answered = endpoint_work(e, items + n, (Lookup *)lookup_obj, handler, burst, &out);
            if (answered < 0)
                goto fail;
        }
        PyObject *c = PyLong_FromSsize_t(answered);
        if (c == NULL)
            goto fail;
        PyList_SET_ITEM(counts, n, c);
    }
    PyMem_Free(out.data);
    return Py_BuildValue("(Nii)", counts, dropped, interrupted);
fail:
    PyMem_Free(out.data);
    Py_DECREF(counts);
    return NULL;
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
    {"serve_many", native_serve_many, METH_VARARGS,
     "serve_many(socket_addresses, lookup, handler, burst, timeout_ms[, endpoint]) -> (answered per socket, dropped, "
     "interrupted)"},
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
    if (PyType_Ready(&LookupType) < 0 || PyType_Ready(&EndpointType) < 0)
        return NULL;
    utf8_dfa_init();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EndpointType);
    if (PyModule_AddObject(m, "Endpoint", (PyObject *)&EndpointType) < 0) {
        Py_DECREF(&EndpointType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
