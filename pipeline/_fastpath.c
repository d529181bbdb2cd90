/*
 * pipeline._fastpath: the pipeline's per-batch hot path in C (see pipeline/fastpath.py).
 *
 * The pure Python path (pipeline/stages.py, pipeline/chain.py, pipeline/copy_binary.py)
 * is the specification and the oracle; this file must give byte-identical results
 * (tests/unit/test_fastpath.py runs both on the same hostile inputs).
 *
 * What is done here and what is not:
 * - msgspec stays the validator: every event is decoded by the msgspec Decoder that
 *   pipeline/fastpath.py hands over (schemas.events._KnownNamesEvent: the full schema
 *   without the tenant_id/action patterns), and only for tenant ids and actions already
 *   in schemas.events.KNOWN_TENANTS / KNOWN_ACTIONS, which a full decode accepted.
 *   metadata and changes are encoded by msgspec's sorted-key Encoder (their size limits
 *   are checked on those bytes, which are then stored and hashed).
 * - Anything this file does not handle itself goes to the pure per-message
 *   pipeline.stages.process, whole: invalid or unusual input (too large, possibly too
 *   deep, a \u0000 escape, an unknown tenant id or action, lowerCamelCase names, actor
 *   type unspecified, size limits, a tenant-bound subject of another tenant, times out of
 *   range), and any error at all. So every dead letter comes from one place, with one
 *   wording, and this file can only ever produce Valid items.
 * - What this file writes itself: the canonical bytes (schemas/README.md: compact JSON,
 *   keys sorted, strings escaped as msgspec escapes them), the binary COPY row of
 *   audit.events without its seq and hash values, and, per batch, the SHA-256 chain, the
 *   month partitions' COPY data and the claims' COPY data.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#ifdef AUDIT_WITH_OPENSSL
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#endif

#define MAX_EVENT_BYTES (64 * 1024)
#define MAX_METADATA_BYTES (16 * 1024)
#define MAX_CHANGES_BYTES (32 * 1024)
#define MAX_DEPTH 32
#define MAX_ACTION_LEN 128
#define EVENT_FIELDS 23
#define PG_EPOCH_US INT64_C(946684800000000)
/* datetime.min and datetime.max in microseconds since 1970-01-01 */
#define MIN_US INT64_C(-62135596800000000)
#define MAX_US INT64_C(253402300799999999)

static const char COPY_HEADER[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";

/* ---- objects handed over by configure() ------------------------------------------- */
static PyObject *cfg_decode;       /* Decoder(_KnownNamesEvent).decode */
static PyObject *cfg_encode;       /* Encoder(order="sorted").encode */
static PyObject *cfg_tenants;      /* schemas.events.KNOWN_TENANTS */
static PyObject *cfg_actions;      /* schemas.events.KNOWN_ACTIONS */
static PyObject *cfg_valid;        /* pipeline.stages.Valid */
static PyObject *cfg_prepared;     /* pipeline.chain.Prepared */
static PyObject *cfg_process;      /* pipeline.stages.process(msg, now, limits) */
static PyObject *cfg_event_id_for; /* pipeline.stages.event_id_for(tenant, msg, now) */
static PyObject *cfg_sha256;       /* hashlib.sha256 (used without OpenSSL) */

/* Messages prepared here, and handed to the pure path (for tests and metrics). */
static unsigned long long n_compiled, n_pure;

static PyObject *s_data, *s_timestamp_ns, *s_subject, *s_tenant_id, *s_action, *s_actor,
    *s_type, *s_id, *s_display_name, *s_category, *s_severity, *s_primary_resource,
    *s_related_resources, *s_description, *s_metadata, *s_changes, *s_occurred_at, *s_ip,
    *s_user_agent, *s_request_id, *s_trace_id, *s_int, *s_utcoffset, *s_canonical, *s_row,
    *s_seq_at, *s_occurred_us, *s_digest, *s_unspecified, *s_stream_seq;

/* ---- a growable byte buffer --------------------------------------------------------- */
typedef struct {
    char *p;
    Py_ssize_t n, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->n + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra) cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_free(Buf *b) {
    PyMem_Free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static inline int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, src, (size_t)n);
    b->n += n;
    return 0;
}

#define PUT_LIT(b, s) buf_put((b), (s), (Py_ssize_t)(sizeof(s) - 1))

static inline void be16(char *p, uint16_t v) {
    p[0] = (char)(v >> 8);
    p[1] = (char)v;
}

static inline void be32(char *p, uint32_t v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static inline void be64(char *p, uint64_t v) {
    be32(p, (uint32_t)(v >> 32));
    be32(p + 4, (uint32_t)v);
}

static inline int put_i32(Buf *b, int32_t v) {
    if (buf_reserve(b, 4) < 0) return -1;
    be32(b->p + b->n, (uint32_t)v);
    b->n += 4;
    return 0;
}

/* A COPY field: int32 length, then the bytes. */
static inline int put_field(Buf *b, const char *src, Py_ssize_t n) {
    if (n > INT32_MAX - 1) {
        PyErr_SetString(PyExc_OverflowError, "field too large for COPY");
        return -1;
    }
    if (buf_reserve(b, 4 + n) < 0) return -1;
    be32(b->p + b->n, (uint32_t)n);
    memcpy(b->p + b->n + 4, src, (size_t)n);
    b->n += 4 + n;
    return 0;
}

/* ---- attribute access --------------------------------------------------------------- */
/* msgspec Structs keep their fields in slots (member descriptors of type T_OBJECT_EX, as
 * __slots__ do). Where (type, name) resolves to such a descriptor, the field is read at
 * its offset, which is what the descriptor itself does; anything else (a property, a
 * dict attribute, an unset slot) goes through PyObject_GetAttr. */
typedef struct {
    PyTypeObject *type; /* a strong reference: the address is never reused while cached */
    PyObject *name;
    Py_ssize_t offset;  /* 0: not a plain slot */
} SlotCache;

#define SLOT_CACHE 128
static SlotCache slot_cache[SLOT_CACHE];

static Py_ssize_t slot_offset(PyTypeObject *t, PyObject *name) {
    PyObject *d = _PyType_Lookup(t, name);
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) return 0;
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READ_RESTRICTED) || m->offset <= 0) return 0;
    return m->offset;
}

/* A borrowed reference to an attribute of a msgspec Struct (or another object whose
 * attributes are stored, not computed): the owner keeps it alive. */
static inline PyObject *attr(PyObject *o, PyObject *name) {
    PyTypeObject *t = Py_TYPE(o);
    SlotCache *c = &slot_cache[(((uintptr_t)t >> 4) * 31 + ((uintptr_t)name >> 4)) % SLOT_CACHE];
    if (c->type != t || c->name != name) {
        Py_INCREF(t);
        Py_XSETREF(c->type, t);
        c->name = name; /* interned by this module, kept for good */
        c->offset = slot_offset(t, name);
    }
    if (c->offset > 0) {
        PyObject *v = *(PyObject **)((char *)o + c->offset);
        if (v != NULL) return v;
    }
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return NULL;
    if (Py_REFCNT(v) == 1) {
        /* computed (a property, __getattr__...): nothing else owns it, so the borrowed
         * pointer would dangle once released. Refused: prepare_batch hands the message to
         * the pure path, the other callers raise. */
        Py_DECREF(v);
        PyErr_Format(PyExc_TypeError, "%.200s.%U is computed, not stored",
                     Py_TYPE(o)->tp_name, name);
        return NULL;
    }
    Py_DECREF(v); /* stored: the owner keeps it alive */
    return v;
}

static inline const char *utf8(PyObject *s, Py_ssize_t *n) {
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "expected str");
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(s, n);
}

/* ---- JSON text, as msgspec writes it -------------------------------------------------- */
static const char HEX[] = "0123456789abcdef";

/* A JSON string: '"' and '\' escaped with a backslash, \b \t \n \f \r as such, the other
 * control characters as \u00XX (lower-case hex), everything else (DEL, non-ASCII as
 * UTF-8) as is. */
/* Whether any of the 8 bytes of w needs an escape (< 0x20, '"', '\\'). */
static inline int word_needs_escape(uint64_t w) {
    const uint64_t ones = UINT64_C(0x0101010101010101), highs = UINT64_C(0x8080808080808080);
    uint64_t quote = w ^ (ones * '"'), slash = w ^ (ones * '\\');
    uint64_t low = (w - ones * 0x20) & ~w;  /* bytes < 0x20 (and no false alarms above 0x7f) */
    uint64_t zq = (quote - ones) & ~quote, zs = (slash - ones) & ~slash;
    return ((low | zq | zs) & highs) != 0;
}

static int put_json_utf8(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, 2 + 6 * n) < 0) return -1;
    char *o = b->p + b->n;
    *o++ = '"';
    Py_ssize_t run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (((i & 7) == 0) && i + 8 <= n) { /* 8 plain bytes at a time */
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!word_needs_escape(w)) {
                i += 7;
                continue;
            }
        }
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (i > run) {
            memcpy(o, s + run, (size_t)(i - run));
            o += i - run;
        }
        run = i + 1;
        *o++ = '\\';
        switch (c) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '\b': *o++ = 'b'; break;
            case '\t': *o++ = 't'; break;
            case '\n': *o++ = 'n'; break;
            case '\f': *o++ = 'f'; break;
            case '\r': *o++ = 'r'; break;
            default:
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = HEX[c >> 4];
                *o++ = HEX[c & 15];
        }
    }
    if (n > run) {
        memcpy(o, s + run, (size_t)(n - run));
        o += n - run;
    }
    *o++ = '"';
    b->n = o - b->p;
    return 0;
}

static int put_json_str(Buf *b, PyObject *s) {
    Py_ssize_t n;
    const char *u = utf8(s, &n);
    if (u == NULL) return -1;
    return put_json_utf8(b, u, n);
}

/* ---- time --------------------------------------------------------------------------- */
/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* An aware datetime as UTC microseconds since 1970-01-01 (pipeline.stages.micros). */
static int datetime_us(PyObject *dt, int64_t *out) {
    if (!PyDateTime_Check(dt)) {
        PyErr_SetString(PyExc_TypeError, "expected a datetime");
        return -1;
    }
    int64_t days = days_from_civil(PyDateTime_GET_YEAR(dt), PyDateTime_GET_MONTH(dt),
                                   PyDateTime_GET_DAY(dt));
    int64_t v = ((days * 24 + PyDateTime_DATE_GET_HOUR(dt)) * 60 + PyDateTime_DATE_GET_MINUTE(dt))
                    * 60 + PyDateTime_DATE_GET_SECOND(dt);
    v = v * 1000000 + PyDateTime_DATE_GET_MICROSECOND(dt);
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(dt);
    if (tz == Py_None) {
        PyErr_SetString(PyExc_ValueError, "naive datetime");
        return -1;
    }
    if (tz != PyDateTime_TimeZone_UTC) {
        PyObject *off = PyObject_CallMethodNoArgs(dt, s_utcoffset);
        if (off == NULL) return -1;
        if (!PyDelta_Check(off)) {
            Py_DECREF(off);
            PyErr_SetString(PyExc_TypeError, "utcoffset() is not a timedelta");
            return -1;
        }
        v -= ((int64_t)PyDateTime_DELTA_GET_DAYS(off) * 86400 + PyDateTime_DELTA_GET_SECONDS(off))
                 * 1000000 + PyDateTime_DELTA_GET_MICROSECONDS(off);
        Py_DECREF(off);
    }
    *out = v;
    return 0;
}

static inline char *digits(char *o, int64_t v, int width) {
    for (int i = width - 1; i >= 0; i--) {
        o[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return o + width;
}

/* schemas.canonical.canonical_ts: "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" (in range: caller). */
static int put_json_ts(Buf *b, int64_t us) {
    int64_t sec = floor_div(us, 1000000);
    int64_t frac = us - sec * 1000000;
    int64_t days = floor_div(sec, 86400);
    int64_t tod = sec - days * 86400;
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (buf_reserve(b, 30) < 0) return -1;
    char *o = b->p + b->n;
    *o++ = '"';
    o = digits(o, y, 4);
    *o++ = '-';
    o = digits(o, m, 2);
    *o++ = '-';
    o = digits(o, d, 2);
    *o++ = 'T';
    o = digits(o, tod / 3600, 2);
    *o++ = ':';
    o = digits(o, tod / 60 % 60, 2);
    *o++ = ':';
    o = digits(o, tod % 60, 2);
    if (frac) {
        *o++ = '.';
        o = digits(o, frac, 6);
    }
    *o++ = 'Z';
    *o++ = '"';
    b->n = o - b->p;
    return 0;
}

static int64_t month_of(int64_t us) {
    int64_t y;
    unsigned m, d;
    civil_from_days(floor_div(us, INT64_C(86400000000)), &y, &m, &d);
    return y * 12 + (int64_t)m - 1;
}

/* ---- UUIDs -------------------------------------------------------------------------- */
/* The 16 bytes of a uuid.UUID; *as_int: its ``int`` (borrowed from the UUID). */
static int uuid_bytes(PyObject *u, unsigned char out[16], PyObject **as_int) {
    PyObject *i = attr(u, s_int);
    if (i == NULL) return -1;
    if (!PyLong_Check(i)) {
        PyErr_SetString(PyExc_TypeError, "UUID.int is not an int");
        return -1;
    }
    *as_int = i;
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t r = PyLong_AsNativeBytes(i, out, 16, Py_ASNATIVEBYTES_BIG_ENDIAN |
                                        Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
                                        Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (r < 0) return -1;
    if (r > 16) {
        PyErr_SetString(PyExc_OverflowError, "UUID.int out of range");
        return -1;
    }
    return 0;
#else
    return _PyLong_AsByteArray((PyLongObject *)i, out, 16, 0, 0);
#endif
}

static int put_json_uuid(Buf *b, const unsigned char u[16]) {
    char t[38];
    int n = 0;
    t[n++] = '"';
    for (int k = 0; k < 16; k++) {
        if (k == 4 || k == 6 || k == 8 || k == 10) t[n++] = '-';
        t[n++] = HEX[u[k] >> 4];
        t[n++] = HEX[u[k] & 15];
    }
    t[n++] = '"';
    return buf_put(b, t, n);
}

/* ---- one event ------------------------------------------------------------------------ */
typedef struct {
    PyObject *now;        /* datetime, for ids derived without a source position */
    int64_t now_us;       /* received_at when the source gave no time */
    int64_t low, high;    /* bounds of occurred_at - received_at, microseconds */
    const char *base;     /* the base subject (UTF-8) */
    Py_ssize_t base_n;
    Buf canon, row, rel;  /* scratch, reused across events */
} Batch;

/* Whether the bytes hold the escape \u0000 (U+0000). */
static int has_nul_escape(const char *p, Py_ssize_t n) {
    const char *end = p + n;
    while (p + 6 <= end) {
        const char *q = memchr(p, '\\', (size_t)(end - p));
        if (q == NULL || q + 6 > end) return 0;
        if (memcmp(q, "\\u0000", 6) == 0) return 1;
        p = q + 1;
    }
    return 0;
}

static Py_ssize_t count_byte(const char *p, Py_ssize_t n, char c, Py_ssize_t stop) {
    Py_ssize_t k = 0;
    const char *end = p + n;
    while (p < end && k <= stop) {
        const char *q = memchr(p, c, (size_t)(end - p));
        if (q == NULL) break;
        k++;
        p = q + 1;
    }
    return k;
}

static int tenant_bound_ok(Batch *bt, PyObject *msg, const char *tenant, Py_ssize_t tn) {
    /* pipeline.stages: subject_tenant(base, subject) must be None or the event's tenant. */
    PyObject *subject = attr(msg, s_subject);
    if (subject == NULL) return -1;
    Py_ssize_t n;
    const char *s = utf8(subject, &n);
    if (s == NULL) return -1;
    if (n == 0 || (n == bt->base_n && memcmp(s, bt->base, (size_t)n) == 0)) return 1;
    if (n <= bt->base_n || memcmp(s, bt->base, (size_t)bt->base_n) != 0 || s[bt->base_n] != '.')
        return 1; /* not a tenant subject of this base */
    s += bt->base_n + 1;
    n -= bt->base_n + 1;
    if (n != tn) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i] == '~' ? '.' : s[i];
        if (c != tenant[i]) return 0;
    }
    return 1;
}

static int put_ref(Buf *b, PyObject *ref) {
    PyObject *dn = attr(ref, s_display_name), *id, *type;
    if (dn == NULL || (id = attr(ref, s_id)) == NULL || (type = attr(ref, s_type)) == NULL)
        return -1;
    if (PUT_LIT(b, "{\"display_name\":") < 0 || put_json_str(b, dn) < 0 ||
        PUT_LIT(b, ",\"id\":") < 0 || put_json_str(b, id) < 0 ||
        PUT_LIT(b, ",\"type\":") < 0 || put_json_str(b, type) < 0 || PUT_LIT(b, "}") < 0)
        return -1;
    return 0;
}

static int put_text_field(Buf *b, PyObject *s) {
    Py_ssize_t n;
    const char *u = utf8(s, &n);
    if (u == NULL) return -1;
    return put_field(b, u, n);
}

/* The canonical bytes and the COPY row of one decoded event, into bt->canon / bt->row. */
static int write_event(Batch *bt, PyObject *ev, PyObject *actor, const char *tenant,
                       Py_ssize_t tn, const char *action, Py_ssize_t an,
                       const unsigned char uid[16], int64_t occurred, int64_t received,
                       PyObject *meta, PyObject *changes, Py_ssize_t *seq_at) {
    Buf *c = &bt->canon, *r = &bt->row, *rel = &bt->rel;
    c->n = r->n = rel->n = 0;
    PyObject *category = attr(ev, s_category), *severity = attr(ev, s_severity),
             *description = attr(ev, s_description), *ip = attr(ev, s_ip),
             *ua = attr(ev, s_user_agent), *request_id = attr(ev, s_request_id),
             *trace_id = attr(ev, s_trace_id), *primary = attr(ev, s_primary_resource),
             *related = attr(ev, s_related_resources), *atype = attr(actor, s_type),
             *aid = attr(actor, s_id), *adn = attr(actor, s_display_name);
    if (!category || !severity || !description || !ip || !ua || !request_id || !trace_id ||
        !primary || !related || !atype || !aid || !adn)
        return -1;
    if (!PyList_Check(related)) {
        PyErr_SetString(PyExc_TypeError, "related_resources is not a list");
        return -1;
    }
    /* related_resources: stored (jsonb) and hashed as the same compact sorted JSON */
    if (PUT_LIT(rel, "[") < 0) return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(related); i++) {
        if (i && PUT_LIT(rel, ",") < 0) return -1;
        if (put_ref(rel, PyList_GET_ITEM(related, i)) < 0) return -1;
    }
    if (PUT_LIT(rel, "]") < 0) return -1;
    PyObject *ptype = NULL, *pid = NULL, *pdn = NULL;
    if (primary != Py_None) {
        if ((ptype = attr(primary, s_type)) == NULL || (pid = attr(primary, s_id)) == NULL ||
            (pdn = attr(primary, s_display_name)) == NULL)
            return -1;
    }
    const char *mp = PyBytes_AS_STRING(meta);
    Py_ssize_t mn = PyBytes_GET_SIZE(meta);

    /* canonical bytes: keys sorted (schemas/README.md) */
    if (PUT_LIT(c, "{\"action\":") < 0 || put_json_utf8(c, action, an) < 0 ||
        PUT_LIT(c, ",\"actor\":{\"display_name\":") < 0 || put_json_str(c, adn) < 0 ||
        PUT_LIT(c, ",\"id\":") < 0 || put_json_str(c, aid) < 0 ||
        PUT_LIT(c, ",\"type\":") < 0 || put_json_str(c, atype) < 0 ||
        PUT_LIT(c, "},\"category\":") < 0 || put_json_str(c, category) < 0 ||
        PUT_LIT(c, ",\"changes\":") < 0)
        return -1;
    if (changes == NULL ? PUT_LIT(c, "null") < 0
                        : buf_put(c, PyBytes_AS_STRING(changes), PyBytes_GET_SIZE(changes)) < 0)
        return -1;
    if (PUT_LIT(c, ",\"description\":") < 0 || put_json_str(c, description) < 0 ||
        PUT_LIT(c, ",\"id\":") < 0 || put_json_uuid(c, uid) < 0 ||
        PUT_LIT(c, ",\"ip\":") < 0 || put_json_str(c, ip) < 0 ||
        PUT_LIT(c, ",\"metadata\":") < 0 || buf_put(c, mp, mn) < 0 ||
        PUT_LIT(c, ",\"occurred_at\":") < 0 || put_json_ts(c, occurred) < 0 ||
        PUT_LIT(c, ",\"primary_resource\":") < 0)
        return -1;
    if (primary == Py_None) {
        if (PUT_LIT(c, "null") < 0) return -1;
    } else if (put_ref(c, primary) < 0) {
        return -1;
    }
    if (PUT_LIT(c, ",\"received_at\":") < 0 || put_json_ts(c, received) < 0 ||
        PUT_LIT(c, ",\"related_resources\":") < 0 || buf_put(c, rel->p, rel->n) < 0 ||
        PUT_LIT(c, ",\"request_id\":") < 0 || put_json_str(c, request_id) < 0 ||
        PUT_LIT(c, ",\"severity\":") < 0 || put_json_str(c, severity) < 0 ||
        PUT_LIT(c, ",\"tenant_id\":") < 0 || put_json_utf8(c, tenant, tn) < 0 ||
        PUT_LIT(c, ",\"trace_id\":") < 0 || put_json_str(c, trace_id) < 0 ||
        PUT_LIT(c, ",\"user_agent\":") < 0 || put_json_str(c, ua) < 0 || PUT_LIT(c, "}") < 0)
        return -1;

    /* the COPY row (pipeline.copy_binary.event_row), without the seq and hash values */
    char t[16];
    if (buf_reserve(r, 2) < 0) return -1;
    be16(r->p + r->n, EVENT_FIELDS);
    r->n += 2;
    if (put_field(r, tenant, tn) < 0) return -1;
    be64(t, (uint64_t)(occurred - PG_EPOCH_US));
    if (put_field(r, t, 8) < 0 || put_field(r, (const char *)uid, 16) < 0 || put_i32(r, 8) < 0)
        return -1;
    *seq_at = r->n;
    be64(t, (uint64_t)(received - PG_EPOCH_US));
    if (put_field(r, t, 8) < 0 || put_field(r, action, an) < 0 ||
        put_text_field(r, category) < 0 || put_text_field(r, severity) < 0 ||
        put_text_field(r, atype) < 0 || put_text_field(r, aid) < 0 || put_text_field(r, adn) < 0)
        return -1;
    if (primary == Py_None) {
        if (put_field(r, "", 0) < 0 || put_field(r, "", 0) < 0 || put_field(r, "", 0) < 0)
            return -1;
    } else if (put_text_field(r, ptype) < 0 || put_text_field(r, pid) < 0 ||
               put_text_field(r, pdn) < 0) {
        return -1;
    }
    if (put_i32(r, (int32_t)(rel->n + 1)) < 0 || PUT_LIT(r, "\001") < 0 ||
        buf_put(r, rel->p, rel->n) < 0 || put_text_field(r, description) < 0 ||
        put_field(r, mp, mn) < 0)
        return -1;
    if (changes == NULL ? put_i32(r, -1) < 0
                        : put_field(r, PyBytes_AS_STRING(changes), PyBytes_GET_SIZE(changes)) < 0)
        return -1;
    if (put_text_field(r, ip) < 0 || put_text_field(r, ua) < 0 ||
        put_text_field(r, request_id) < 0 || put_text_field(r, trace_id) < 0 ||
        put_i32(r, 32) < 0)
        return -1;
    return 0;
}

/* Valid for ``msg``, or NULL: without an exception set, the message is not one this path
 * handles (the caller runs the pure path); with one, something failed (the caller runs
 * the pure path too, unless it is not an Exception: cancellation, KeyboardInterrupt). */
static PyObject *fast_one(Batch *bt, PyObject *msg) {
    PyObject *ev = NULL, *meta = NULL, *changes_b = NULL, *id = NULL, *result = NULL;
    PyObject *data = attr(msg, s_data);
    if (data == NULL) return NULL;
    if (!PyBytes_CheckExact(data)) return NULL;
    const char *p = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n > MAX_EVENT_BYTES) return NULL;
    /* schemas.events.decode_parts leaves both of these to the full decode */
    if (has_nul_escape(p, n)) return NULL;
    Py_ssize_t opened = count_byte(p, n, '{', MAX_DEPTH);
    if (opened <= MAX_DEPTH) opened += count_byte(p, n, '[', MAX_DEPTH - opened);
    if (opened > MAX_DEPTH) return NULL; /* possibly too deep: check_depth decides */

    ev = PyObject_CallOneArg(cfg_decode, data);
    if (ev == NULL) return NULL;
    PyObject *tenant = attr(ev, s_tenant_id), *action = attr(ev, s_action),
             *actor = attr(ev, s_actor);
    if (!tenant || !action || !actor) goto done;
    int known = PySet_Contains(cfg_tenants, tenant);
    if (known <= 0) goto done;
    known = PySet_Contains(cfg_actions, action);
    if (known <= 0) goto done;
    PyObject *atype = attr(actor, s_type);
    if (atype == NULL) goto done;
    int cmp = PyObject_RichCompareBool(atype, s_unspecified, Py_EQ);
    if (cmp != 0) goto done;
    PyObject *metadata = attr(ev, s_metadata), *changes = attr(ev, s_changes);
    if (!metadata || !changes) goto done;
    meta = PyObject_CallOneArg(cfg_encode, metadata);
    if (meta == NULL || !PyBytes_Check(meta) || PyBytes_GET_SIZE(meta) > MAX_METADATA_BYTES)
        goto done;
    if (changes != Py_None) {
        changes_b = PyObject_CallOneArg(cfg_encode, changes);
        if (changes_b == NULL || !PyBytes_Check(changes_b) ||
            PyBytes_GET_SIZE(changes_b) > MAX_CHANGES_BYTES)
            goto done;
    }
    Py_ssize_t tn, an;
    const char *tp = utf8(tenant, &tn), *ap = utf8(action, &an);
    if (tp == NULL || ap == NULL || an > MAX_ACTION_LEN) goto done;
    int bound = tenant_bound_ok(bt, msg, tp, tn);
    if (bound <= 0) goto done;

    PyObject *ts_obj = attr(msg, s_timestamp_ns);
    if (ts_obj == NULL) goto done;
    int64_t ts = PyLong_AsLongLong(ts_obj);
    if (ts == -1 && PyErr_Occurred()) goto done;
    int64_t received = ts ? floor_div(ts, 1000) : bt->now_us, occurred = received;
    PyObject *occ = attr(ev, s_occurred_at);
    if (occ == NULL) goto done;
    if (occ != Py_None && datetime_us(occ, &occurred) < 0) goto done;
    if (received < MIN_US || received > MAX_US || occurred < MIN_US || occurred > MAX_US)
        goto done;
    if (occurred - received < bt->low || occurred - received > bt->high) goto done;

    id = attr(ev, s_id);
    if (id == NULL) goto done;
    if (id == Py_None) {
        id = PyObject_CallFunctionObjArgs(cfg_event_id_for, tenant, msg, bt->now, NULL);
        if (id == NULL) goto done;
    } else {
        Py_INCREF(id);
    }
    unsigned char uid[16];
    PyObject *id_int;
    if (uuid_bytes(id, uid, &id_int) < 0) goto done;

    char lower[MAX_ACTION_LEN];
    for (Py_ssize_t i = 0; i < an; i++) {
        char ch = ap[i];
        lower[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    Py_ssize_t seq_at;
    if (write_event(bt, ev, actor, tp, tn, lower, an, uid, occurred, received, meta, changes_b,
                    &seq_at) < 0)
        goto done;

    PyObject *args[8] = {tenant, id, PyLong_FromLongLong(occurred),
                         PyLong_FromLongLong(received),
                         PyBytes_FromStringAndSize(bt->canon.p, bt->canon.n),
                         PyBytes_FromStringAndSize(bt->row.p, bt->row.n),
                         PyLong_FromSsize_t(seq_at), PyTuple_Pack(2, tenant, id_int)};
    /* (str, int) cannot be part of a cycle (the collector would untrack it itself at its
     * first pass): untracked now, the dedupe window's keys never make the collector run. */
    if (args[7] != NULL) PyObject_GC_UnTrack(args[7]);
    PyObject *prepared = NULL;
    if (args[2] && args[3] && args[4] && args[5] && args[6] && args[7])
        prepared = PyObject_Vectorcall(cfg_prepared, args, 8, NULL);
    for (int k = 2; k < 8; k++) Py_XDECREF(args[k]);
    if (prepared != NULL) {
        PyObject *vargs[2] = {msg, prepared};
        result = PyObject_Vectorcall(cfg_valid, vargs, 2, NULL);
        Py_DECREF(prepared);
    }
done:
    Py_XDECREF(id);
    Py_XDECREF(changes_b);
    Py_XDECREF(meta);
    Py_XDECREF(ev);
    return result;
}

static int configured(void) {
    if (cfg_decode == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pipeline._fastpath.configure() was not called");
        return 0;
    }
    return 1;
}

/* prepare_batch(msgs, now, limits, now_us, low_us, high_us, base_subject) */
static PyObject *prepare_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "prepare_batch takes 7 arguments");
        return NULL;
    }
    if (!configured()) return NULL;
    Batch bt = {0};
    bt.now = args[1];
    bt.now_us = PyLong_AsLongLong(args[3]);
    bt.low = PyLong_AsLongLong(args[4]);
    bt.high = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    bt.base = utf8(args[6], &bt.base_n);
    if (bt.base == NULL) return NULL;
    /* a tuple: process() and event_id_for() run Python code between items, which must not
     * be able to shrink or change the sequence under the borrowed items and the size n */
    PyObject *seq = PySequence_Tuple(args[0]);
    if (seq == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    if (out == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *msg = PyTuple_GET_ITEM(seq, i);
        PyObject *r = fast_one(&bt, msg);
        if (r != NULL) {
            n_compiled++;
        } else {
            n_pure++;
            if (PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_Exception)) goto fail;
                PyErr_Clear();
            }
            r = PyObject_CallFunctionObjArgs(cfg_process, msg, args[1], args[2], NULL);
            if (r == NULL) goto fail;
        }
        PyList_SET_ITEM(out, i, r);
    }
    Py_DECREF(seq);
    buf_free(&bt.canon);
    buf_free(&bt.row);
    buf_free(&bt.rel);
    return out;
fail:
    Py_XDECREF(out);
    Py_DECREF(seq);
    buf_free(&bt.canon);
    buf_free(&bt.row);
    buf_free(&bt.rel);
    return NULL;
}

/* ---- deferred preparing (pipeline.stages.defer_batch) ------------------------------ */
static PyObject *cfg_pending; /* pipeline.stages.Pending */

static inline int json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* As pipeline.stages.pending_tenant: the tenant (a new reference) of a message whose
 * preparing may wait, Py_None (a new reference) when it may not, NULL on an error. */
static PyObject *pending_tenant(PyObject *msg) {
    PyObject *ts = attr(msg, s_timestamp_ns), *seq = attr(msg, s_stream_seq);
    if (ts == NULL || seq == NULL) return NULL;
    int t = PyObject_IsTrue(ts), q = t > 0 ? PyObject_IsTrue(seq) : 0;
    if (t < 0 || q < 0) return NULL;
    if (!t || !q) Py_RETURN_NONE;
    PyObject *data = attr(msg, s_data);
    if (data == NULL) return NULL;
    if (!PyBytes_CheckExact(data)) Py_RETURN_NONE;
    const char *p = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data), i = 1;
    if (n < 1 || p[0] != '{') Py_RETURN_NONE;
    while (i < n && json_ws(p[i])) i++;
    if (n - i < 11 || memcmp(p + i, "\"tenant_id\"", 11) != 0) Py_RETURN_NONE;
    i += 11;
    while (i < n && json_ws(p[i])) i++;
    if (i >= n || p[i] != ':') Py_RETURN_NONE;
    i++;
    while (i < n && json_ws(p[i])) i++;
    if (i >= n || p[i] != '"') Py_RETURN_NONE;
    Py_ssize_t start = ++i;
    while (i < n && p[i] != '"' && p[i] != '\\') i++;
    if (i >= n || p[i] != '"' || i == start) Py_RETURN_NONE;
    PyObject *s = PyUnicode_DecodeUTF8(p + start, i - start, NULL);
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return s;
}

/* defer_split(msgs) -> (items, eager): per message a Pending(msg, tenant) or None, and
 * the indices of the None ones (to be prepared at once). */
static PyObject *defer_split(PyObject *self, PyObject *msgs) {
    if (cfg_pending == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pipeline._fastpath.configure_defer() was not called");
        return NULL;
    }
    PyObject *seq = PySequence_Tuple(msgs);
    if (seq == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject *items = PyList_New(n), *eager = PyList_New(0);
    if (items == NULL || eager == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *msg = PyTuple_GET_ITEM(seq, i);
        PyObject *tenant = pending_tenant(msg);
        if (tenant == NULL) goto fail;
        PyObject *item;
        if (tenant == Py_None) {
            item = tenant; /* the reference moves into the list */
            PyObject *k = PyLong_FromSsize_t(i);
            if (k == NULL || PyList_Append(eager, k) < 0) {
                Py_XDECREF(k);
                Py_DECREF(item);
                goto fail;
            }
            Py_DECREF(k);
        } else {
            PyObject *args[2] = {msg, tenant};
            item = PyObject_Vectorcall(cfg_pending, args, 2, NULL);
            Py_DECREF(tenant);
            if (item == NULL) goto fail;
        }
        PyList_SET_ITEM(items, i, item);
    }
    Py_DECREF(seq);
    PyObject *out = PyTuple_Pack(2, items, eager);
    Py_DECREF(items);
    Py_DECREF(eager);
    return out;
fail:
    Py_DECREF(seq);
    Py_XDECREF(items);
    Py_XDECREF(eager);
    return NULL;
}

static PyObject *configure_defer(PyObject *self, PyObject *pending) {
    Py_INCREF(pending);
    Py_XSETREF(cfg_pending, pending);
    Py_RETURN_NONE;
}

/* ---- per batch, in the flush transaction ------------------------------------------------- */
typedef struct {
    PyObject *tenant; /* borrowed from the items */
    int64_t seq;
    unsigned char hash[32];
} Head;

typedef struct {
    int64_t month;
    Py_ssize_t size; /* bytes of its rows */
    PyObject *out;   /* its COPY data (bytes, written in place) */
} Month;


/* Rows are written to PostgreSQL grouped by tenant (pipeline.chain.chain_copy says why).
   The items are read in their own order (the order they sit in memory) in two passes:
   the first finds each item's group and row size, the second writes each row straight
   to its place in the COPY data. */
typedef struct {
    PyObject *tenant; /* borrowed */
    Py_ssize_t group;
} GroupName;

static int cmp_group_name(const void *a, const void *b) {
    /* code-point order, as Python sorts str (both are str: checked when read) */
    return PyUnicode_Compare(((const GroupName *)a)->tenant, ((const GroupName *)b)->tenant);
}

/* The groups 0..ng-1 in code-point order of their tenants (names[g]); NULL on error. */
static Py_ssize_t *sorted_groups(Py_ssize_t ng, PyObject *const *names) {
    GroupName *g = PyMem_Malloc((size_t)(ng ? ng : 1) * sizeof *g);
    Py_ssize_t *out = PyMem_Malloc((size_t)(ng ? ng : 1) * sizeof *out);
    if (g == NULL || out == NULL) {
        PyMem_Free(g);
        PyMem_Free(out);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t j = 0; j < ng; j++) {
        g[j].tenant = names[j];
        g[j].group = j;
    }
    qsort(g, (size_t)ng, sizeof *g, cmp_group_name);
    for (Py_ssize_t r = 0; r < ng; r++) out[r] = g[r].group;
    PyMem_Free(g);
    return out;
}

/* Where each row goes when rows are written grouped by tenant, groups in the order
   ``ranked`` (sorted_groups), each group's rows in item order: dest[i] = the byte offset
   of item i's row, from ``base``, for the items with mon[i] == month (every item when mon
   is NULL). gid[i]: item i's group; sizes[i]: its row's size; per_group: ng scratch. */
static void group_places(Py_ssize_t n, const Py_ssize_t *gid, const Py_ssize_t *sizes,
                         const Py_ssize_t *mon, Py_ssize_t month, Py_ssize_t ng,
                         const Py_ssize_t *ranked, Py_ssize_t base, Py_ssize_t *per_group,
                         Py_ssize_t *dest) {
    memset(per_group, 0, (size_t)(ng ? ng : 1) * sizeof *per_group);
    for (Py_ssize_t i = 0; i < n; i++)
        if (mon == NULL || mon[i] == month) per_group[gid[i]] += sizes[i];
    Py_ssize_t at = base;
    for (Py_ssize_t r = 0; r < ng; r++) {
        Py_ssize_t size = per_group[ranked[r]];
        per_group[ranked[r]] = at;
        at += size;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (mon == NULL || mon[i] == month) {
            dest[i] = per_group[gid[i]];
            per_group[gid[i]] += sizes[i];
        }
}

/* A tenant's group: its index in ``index`` (tenant -> int), a new one when not there yet
   (then names[*ng] = tenant, *ng + 1). -1 on error. */
static Py_ssize_t group_of(PyObject *index, PyObject *tenant, PyObject ***names, Py_ssize_t *ng,
                           Py_ssize_t *cap) {
    if (!PyUnicode_Check(tenant)) {
        PyErr_SetString(PyExc_TypeError, "Prepared.tenant_id is not str");
        return -1;
    }
    PyObject *k = PyDict_GetItemWithError(index, tenant);
    if (k != NULL) return PyLong_AsSsize_t(k);
    if (PyErr_Occurred()) return -1;
    if (*ng == *cap) {
        Py_ssize_t grown_cap = *cap ? *cap * 2 : 64;
        PyObject **grown = PyMem_Realloc(*names, (size_t)grown_cap * sizeof **names);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *names = grown;
        *cap = grown_cap;
    }
    PyObject *kk = PyLong_FromSsize_t(*ng);
    if (kk == NULL) return -1;
    int set = PyDict_SetItem(index, tenant, kk);
    Py_DECREF(kk);
    if (set < 0) return -1;
    (*names)[*ng] = tenant;
    return (*ng)++;
}

static int sha256_chain(const unsigned char prev[32], const char *p, Py_ssize_t n,
                        unsigned char out[32]) {
#ifdef AUDIT_WITH_OPENSSL
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, prev, 32);
    SHA256_Update(&ctx, p, (size_t)n);
    SHA256_Final(out, &ctx);
    return 0;
#else
    PyObject *data = PyBytes_FromStringAndSize(NULL, 32 + n);
    if (data == NULL) return -1;
    memcpy(PyBytes_AS_STRING(data), prev, 32);
    memcpy(PyBytes_AS_STRING(data) + 32, p, (size_t)n);
    PyObject *h = PyObject_CallOneArg(cfg_sha256, data);
    Py_DECREF(data);
    if (h == NULL) return -1;
    PyObject *digest = PyObject_CallMethodNoArgs(h, s_digest);
    Py_DECREF(h);
    if (digest == NULL) return -1;
    if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != 32) {
        Py_DECREF(digest);
        PyErr_SetString(PyExc_ValueError, "sha256 digest is not 32 bytes");
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(digest), 32);
    Py_DECREF(digest);
    return 0;
#endif
}

/* The row of a Prepared: borrowed (bytes), with its seq offset checked. */
static int item_row(PyObject *item, const char **row, Py_ssize_t *rn, Py_ssize_t *seq_at) {
    PyObject *r = attr(item, s_row), *at = attr(item, s_seq_at);
    if (r == NULL || at == NULL) return -1;
    if (!PyBytes_Check(r)) {
        PyErr_SetString(PyExc_TypeError, "Prepared.row is not bytes");
        return -1;
    }
    *seq_at = PyLong_AsSsize_t(at);
    if (*seq_at == -1 && PyErr_Occurred()) return -1;
    *row = PyBytes_AS_STRING(r);
    *rn = PyBytes_GET_SIZE(r);
    if (*seq_at < 6 || *seq_at > *rn) {
        PyErr_SetString(PyExc_ValueError, "Prepared.seq_at out of range");
        return -1;
    }
    return 0;
}

static PyObject *claims_copy(PyObject *self, PyObject *items) {
    PyObject *seq = PySequence_Fast(items, "items must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), ng = 0, capg = 0, total = 0;
    PyObject *out = NULL, *index = PyDict_New(), **names = NULL;
    Py_ssize_t *ranked = NULL, *gid = PyMem_Malloc((size_t)(n ? n : 1) * 3 * sizeof *gid);
    if (index == NULL || gid == NULL) {
        if (gid == NULL) PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t *sizes = gid + n, *dest = gid + 2 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *tenant = attr(item, s_tenant_id);
        if (tenant == NULL) goto done;
        const char *row;
        Py_ssize_t rn, at;
        if (item_row(item, &row, &rn, &at) < 0) goto done;
        if ((gid[i] = group_of(index, tenant, &names, &ng, &capg)) < 0) goto done;
        sizes[i] = 2 + at - 6;
        total += sizes[i];
    }
    if ((ranked = sorted_groups(ng, names)) == NULL) goto done;
    Py_ssize_t *per_group = PyMem_Malloc((size_t)(ng ? ng : 1) * sizeof *per_group);
    if (per_group == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    group_places(n, gid, sizes, NULL, 0, ng, ranked, 19, per_group, dest);
    PyMem_Free(per_group);
    out = PyBytes_FromStringAndSize(NULL, 19 + total + 2);
    if (out == NULL) goto done;
    char *w = PyBytes_AS_STRING(out);
    memcpy(w, COPY_HEADER, 19);
    memcpy(w + 19 + total, "\377\377", 2);
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *row;
        Py_ssize_t rn, at;
        if (item_row(PySequence_Fast_GET_ITEM(seq, i), &row, &rn, &at) < 0 ||
            2 + at - 6 != sizes[i]) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "an item changed");
            Py_CLEAR(out);
            goto done;
        }
        be16(w + dest[i], 3);
        memcpy(w + dest[i] + 2, row + 2, (size_t)(at - 6));
    }
done:
    PyMem_Free(gid);
    PyMem_Free(ranked);
    PyMem_Free(names);
    Py_XDECREF(index);
    Py_DECREF(seq);
    return out;
}

/* chain_copy(items, heads) -> ({month: COPY data}, {tenant: (seq, hash)}) */
static PyObject *chain_copy(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "chain_copy takes 2 arguments");
        return NULL;
    }
    if (!configured()) return NULL;
    PyObject *heads = args[1];
    PyObject *seq = PySequence_Fast(args[0], "items must be a sequence");
    if (seq == NULL) return NULL;
    PyObject *index = PyDict_New(), *by_month = NULL, *moved = NULL, *result = NULL;
    PyObject **names = NULL;
    Head *hs = NULL; /* hs[g]: the head of group g (tenant names[g]) */
    Py_ssize_t nh = 0, caph = 0, capn = 0;
    Month *ms = NULL;
    Py_ssize_t nm = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t *ranked = NULL, *per_group = NULL;
    /* per item: its group (head), its month (index in ms), its row's size, its place */
    Py_ssize_t *gid = PyMem_Malloc((size_t)(n ? n : 1) * 4 * sizeof *gid);
    if (index == NULL || gid == NULL) {
        if (gid == NULL) PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t *mon = gid + n, *sizes = gid + 2 * n, *dest = gid + 3 * n;
    /* Pass 1: each item's head, month and row size. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *tenant = attr(item, s_tenant_id), *occ = attr(item, s_occurred_us);
        if (!tenant || !occ) goto done;
        const char *row;
        Py_ssize_t rn, at;
        if (item_row(item, &row, &rn, &at) < 0) goto done;
        int64_t occurred = PyLong_AsLongLong(occ);
        if (occurred == -1 && PyErr_Occurred()) goto done;
        Py_ssize_t known = nh;
        if ((gid[i] = group_of(index, tenant, &names, &nh, &capn)) < 0) goto done;
        if (nh > known) { /* a new tenant: its head, as locked */
            PyObject *head = PyObject_GetItem(heads, tenant);
            if (head == NULL) goto done;
            if (!PyTuple_Check(head) || PyTuple_GET_SIZE(head) != 2 ||
                !PyBytes_Check(PyTuple_GET_ITEM(head, 1)) ||
                PyBytes_GET_SIZE(PyTuple_GET_ITEM(head, 1)) != 32) {
                Py_DECREF(head);
                PyErr_SetString(PyExc_TypeError, "a head is (seq, 32-byte hash)");
                goto done;
            }
            int64_t last = PyLong_AsLongLong(PyTuple_GET_ITEM(head, 0));
            if (last == -1 && PyErr_Occurred()) {
                Py_DECREF(head);
                goto done;
            }
            if (known == caph) {
                caph = caph ? caph * 2 : 64;
                Head *grown = PyMem_Realloc(hs, (size_t)caph * sizeof(Head));
                if (grown == NULL) {
                    Py_DECREF(head);
                    PyErr_NoMemory();
                    goto done;
                }
                hs = grown;
            }
            Head *h = &hs[known];
            h->tenant = tenant;
            h->seq = last;
            memcpy(h->hash, PyBytes_AS_STRING(PyTuple_GET_ITEM(head, 1)), 32);
            Py_DECREF(head);
        }
        int64_t month = month_of(occurred);
        mon[i] = -1;
        for (Py_ssize_t j = 0; j < nm; j++)
            if (ms[j].month == month) mon[i] = j;
        if (mon[i] < 0) {
            Month *grown = PyMem_Realloc(ms, (size_t)(nm + 1) * sizeof(Month));
            if (grown == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            ms = grown;
            ms[nm].month = month;
            ms[nm].size = 0;
            ms[nm].out = NULL;
            mon[i] = nm++;
        }
        sizes[i] = rn + 40;
        ms[mon[i]].size += rn + 40;
    }
    /* Where each row goes: per month, tenants in code-point order. */
    per_group = PyMem_Malloc((size_t)(nh ? nh : 1) * sizeof *per_group);
    if (per_group == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if ((ranked = sorted_groups(nh, names)) == NULL) goto done;
    for (Py_ssize_t j = 0; j < nm; j++) {
        ms[j].out = PyBytes_FromStringAndSize(NULL, 19 + ms[j].size + 2);
        if (ms[j].out == NULL) goto done;
        char *w = PyBytes_AS_STRING(ms[j].out);
        memcpy(w, COPY_HEADER, 19);
        memcpy(w + 19 + ms[j].size, "\377\377", 2);
        group_places(n, gid, sizes, mon, j, nh, ranked, 19, per_group, dest);
    }
    /* Pass 2, in item order (each tenant's chain order): hash, then write in place. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *canonical = attr(item, s_canonical);
        if (canonical == NULL) goto done;
        if (!PyBytes_Check(canonical)) {
            PyErr_SetString(PyExc_TypeError, "Prepared.canonical is not bytes");
            goto done;
        }
        const char *row;
        Py_ssize_t rn, at;
        if (item_row(item, &row, &rn, &at) < 0) goto done;
        if (rn + 40 != sizes[i]) {
            PyErr_SetString(PyExc_RuntimeError, "an item changed");
            goto done;
        }
        Head *h = &hs[gid[i]];
        unsigned char digest[32];
        if (sha256_chain(h->hash, PyBytes_AS_STRING(canonical), PyBytes_GET_SIZE(canonical),
                         digest) < 0)
            goto done;
        h->seq += 1;
        memcpy(h->hash, digest, 32);
        char *w = PyBytes_AS_STRING(ms[mon[i]].out) + dest[i];
        memcpy(w, row, (size_t)at);
        be64(w + at, (uint64_t)h->seq);
        memcpy(w + at + 8, row + at, (size_t)(rn - at));
        memcpy(w + rn + 8, digest, 32);
    }
    by_month = PyDict_New();
    moved = PyDict_New();
    if (by_month == NULL || moved == NULL) goto done;
    for (Py_ssize_t j = 0; j < nm; j++) {
        PyObject *key = PyLong_FromLongLong(ms[j].month);
        int set = key ? PyDict_SetItem(by_month, key, ms[j].out) : -1;
        Py_XDECREF(key);
        if (set < 0) goto done;
    }
    for (Py_ssize_t j = 0; j < nh; j++) {
        PyObject *val = Py_BuildValue("(Ly#)", (long long)hs[j].seq, (const char *)hs[j].hash,
                                      (Py_ssize_t)32);
        int set = val ? PyDict_SetItem(moved, hs[j].tenant, val) : -1;
        Py_XDECREF(val);
        if (set < 0) goto done;
    }
    result = PyTuple_Pack(2, by_month, moved);
done:
    for (Py_ssize_t j = 0; j < nm; j++) Py_XDECREF(ms[j].out);
    PyMem_Free(gid);
    PyMem_Free(ranked);
    PyMem_Free(per_group);
    PyMem_Free(names);
    PyMem_Free(ms);
    PyMem_Free(hs);
    Py_XDECREF(by_month);
    Py_XDECREF(moved);
    Py_XDECREF(index);
    Py_DECREF(seq);
    return result;
}

/* ---- NATS: MSG frames of the JetStream source, scanned in C ------------------------------ */
static PyObject *cfg_message;   /* pipeline.stages.Message */
static PyObject *msg_kwnames;   /* ("data", "stream_seq", "timestamp_ns", "ack", "subject", "delivered", "size") */
static PyObject *msg_kwnames_h; /* the same and "headers" */

#define MAX_CONTROL_LINE 4096

/* A decimal of digits only that fits an int64 (as Python's int() reads it); -1 otherwise. */
static int64_t parse_digits(const char *p, Py_ssize_t n) {
    if (n <= 0 || n > 19) return -1;
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int d = p[i] - '0';
        if (d < 0 || d > 9 || v > (INT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    return v;
}

/* (stream sequence, timestamp ns, delivered) of a $JS.ACK reply subject, as
 * pipeline.source_nats.parse_ack_subject reads them; 0 on success, -1 when the subject is
 * not one this code reads the same way (the caller leaves the frame to Python). */
static int ack_numbers(const char *p, Py_ssize_t n, int64_t *seq, int64_t *ts, int64_t *delivered) {
    const char *tok[16];
    Py_ssize_t len[16];
    int k = 0;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i == n || p[i] == '.') {
            if (k == 16) return -1;
            tok[k] = p + start;
            len[k++] = i - start;
            start = i + 1;
        }
    }
    int s, t, d;
    if (k == 9) {
        s = 5, t = 7, d = 4;
    } else if (k >= 10) {
        s = 7, t = 9, d = 6;
    } else {
        return -1;
    }
    *seq = parse_digits(tok[s], len[s]);
    *ts = parse_digits(tok[t], len[t]);
    *delivered = parse_digits(tok[d], len[d]);
    return (*seq < 0 || *ts < 0 || *delivered < 0) ? -1 : 0;
}

/* The header block of an HMSG frame as a dict, as nats-py's Client._process_headers reads
 * it, for the plain case only: "NATS/1.0\r\n" (no inline status), then lines of
 * "Name: Value\r\n" in printable ASCII (spaces allowed around name and value, not inside
 * the name), ending with an empty line; a repeated name keeps its last value. New
 * reference; NULL without an exception when the block is anything else (the Python path
 * reads it), NULL with one on error. */
static PyObject *plain_headers(const char *h, Py_ssize_t n) {
    static const char first[] = "NATS/1.0\r\n";
    const Py_ssize_t fn = (Py_ssize_t)sizeof(first) - 1;
    if (n < fn + 2 || memcmp(h, first, (size_t)fn) != 0 || h[n - 2] != '\r' || h[n - 1] != '\n')
        return NULL;
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    Py_ssize_t i = fn;
    while (i < n) {
        Py_ssize_t end = i, colon = -1;
        while (end < n && h[end] != '\r') {
            unsigned char c = (unsigned char)h[end];
            if (c < 0x20 || c > 0x7e) goto other; /* tabs, controls, non-ASCII: Python's */
            if (c == ':' && colon < 0) colon = end;
            end++;
        }
        if (end + 1 >= n || h[end + 1] != '\n') goto other; /* a lone CR */
        if (end > i) {
            if (colon < 0) goto other; /* a line without a colon: Python's */
            Py_ssize_t a = i, b = colon, va = colon + 1, vb = end;
            while (a < b && h[a] == ' ') a++;
            while (b > a && h[b - 1] == ' ') b--;
            if (a == b || memchr(h + a, ' ', (size_t)(b - a)) != NULL) goto other;
            while (va < vb && h[va] == ' ') va++;
            while (vb > va && h[vb - 1] == ' ') vb--;
            PyObject *k = PyUnicode_DecodeASCII(h + a, b - a, NULL);
            PyObject *v = k ? PyUnicode_DecodeASCII(h + va, vb - va, NULL) : NULL;
            int set = v ? PyDict_SetItem(out, k, v) : -1;
            Py_XDECREF(k);
            Py_XDECREF(v);
            if (set < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
        i = end + 2;
    }
    if (PyDict_GET_SIZE(out) > 0) return out;
other:
    Py_DECREF(out);
    return NULL;
}

/* A Message for a MSG frame with a JetStream reply, and for an HMSG frame with one whose
 * headers plain_headers reads; else the frame as (subject, reply, data, headers) for the
 * Python path. New reference, NULL on error. */
static PyObject *frame_item(const char *subj, Py_ssize_t sn, const char *reply, Py_ssize_t rn,
                            const char *hdr, Py_ssize_t hn, const char *data, Py_ssize_t dn) {
    int64_t seq, ts, delivered;
    if (rn > 0 && cfg_message != NULL && ack_numbers(reply, rn, &seq, &ts, &delivered) == 0) {
        PyObject *headers = NULL;
        if (hn > 0) {
            headers = plain_headers(hdr, hn);
            if (headers == NULL && PyErr_Occurred()) return NULL;
        }
        if (hn == 0 || headers != NULL) {
            PyObject *args[8] = {PyBytes_FromStringAndSize(data, dn), PyLong_FromLongLong(seq),
                                 PyLong_FromLongLong(ts), PyUnicode_DecodeUTF8(reply, rn, NULL),
                                 PyUnicode_DecodeUTF8(subj, sn, NULL),
                                 PyLong_FromLongLong(delivered), PyLong_FromSsize_t(dn + hn),
                                 headers};
            int nargs = headers != NULL ? 8 : 7;
            PyObject *m = NULL;
            int ok = 1;
            for (int i = 0; i < nargs; i++) ok &= args[i] != NULL;
            if (ok)
                m = PyObject_Vectorcall(cfg_message, args, 0,
                                        headers != NULL ? msg_kwnames_h : msg_kwnames);
            for (int i = 0; i < nargs; i++) Py_XDECREF(args[i]);
            if (m != NULL) return m;
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return NULL;
            PyErr_Clear(); /* not UTF-8: the Python path says what it says */
        }
    }
    PyObject *h = hn ? PyBytes_FromStringAndSize(hdr, hn) : (Py_INCREF(Py_None), Py_None);
    if (h == NULL) return NULL;
    return Py_BuildValue("(y#y#y#N)", subj, sn, reply, rn, data, dn, h);
}

/* scan_msgs(buf, sinks) -> (used, groups, other)
 *
 * Complete MSG/HMSG frames at the start of the bytearray ``buf`` whose sid is a key of
 * ``sinks``: ``used`` bytes of them, as ``groups`` [(sid, items, payload bytes)] in order
 * (consecutive frames of one sid in one group; items as frame_item makes them). Then
 * ``other``: 0 when the buffer was used up; -1 when the next frame or line is incomplete
 * (wait for more bytes); else the length of the next frame or control line, which is not
 * one of these (another sid, INFO, PING, +OK, -ERR, anything odd): nats-py's parser takes
 * exactly that much. */
static PyObject *scan_msgs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyByteArray_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan_msgs(bytearray, dict)");
        return NULL;
    }
    const char *b = PyByteArray_AS_STRING(args[0]);
    Py_ssize_t n = PyByteArray_GET_SIZE(args[0]), pos = 0, other = 0;
    PyObject *groups = PyList_New(0), *items = NULL;
    long cur_sid = -1;
    Py_ssize_t cur_bytes = 0;
    if (groups == NULL) return NULL;
    while (pos < n) {
        Py_ssize_t avail = n - pos;
        const char *line = b + pos;
        const char *lf = memchr(line, '\n', (size_t)(avail < MAX_CONTROL_LINE ? avail : MAX_CONTROL_LINE));
        if (lf == NULL) { /* incomplete, or a line too long for this: nats-py's turn */
            other = avail < MAX_CONTROL_LINE ? -1 : avail;
            break;
        }
        Py_ssize_t line_len = lf - line + 1; /* with the CRLF */
        int hmsg = avail >= 5 && memcmp(line, "HMSG ", 5) == 0;
        if (!hmsg && !(avail >= 4 && memcmp(line, "MSG ", 4) == 0)) {
            other = line_len;
            break;
        }
        if (line_len < 2 || line[line_len - 2] != '\r') {
            other = line_len;
            break;
        }
        /* tokens: [H]MSG subject sid [reply] [#header bytes] #total bytes */
        const char *tok[6];
        Py_ssize_t tl[6];
        int k = 0;
        Py_ssize_t i = 0, end = line_len - 2;
        while (i < end) {
            while (i < end && (line[i] == ' ' || line[i] == '\t')) i++;
            if (i >= end) break;
            Py_ssize_t st = i;
            while (i < end && line[i] != ' ' && line[i] != '\t') i++;
            if (k == 6) {
                k = 7;
                break;
            }
            tok[k] = line + st;
            tl[k++] = i - st;
        }
        int with_reply = hmsg ? (k == 6) : (k == 5);
        if (!(hmsg ? (k == 5 || k == 6) : (k == 4 || k == 5))) {
            other = line_len;
            break;
        }
        int64_t sid = parse_digits(tok[2], tl[2]);
        int64_t total = parse_digits(tok[k - 1], tl[k - 1]);
        int64_t hlen = hmsg ? parse_digits(tok[k - 2], tl[k - 2]) : 0;
        /* total up to INT64_MAX: line_len + total + 2 must not overflow (else the
         * frame > avail test passes and payload + hlen points past the buffer) */
        if (sid < 0 || total < 0 || hlen < 0 || hlen > total ||
            total > PY_SSIZE_T_MAX - line_len - 2) {
            other = line_len;
            break;
        }
        Py_ssize_t frame = line_len + (Py_ssize_t)total + 2;
        PyObject *key = PyLong_FromLongLong(sid);
        if (key == NULL) goto fail;
        int ours = PyDict_Contains(args[1], key);
        Py_DECREF(key);
        if (ours < 0) goto fail;
        if (!ours) {
            other = frame <= avail ? frame : -1;
            break;
        }
        if (frame > avail) {
            other = -1;
            break;
        }
        const char *payload = line + line_len;
        PyObject *item = frame_item(tok[1], tl[1], with_reply ? tok[3] : "", with_reply ? tl[3] : 0,
                                    payload, (Py_ssize_t)hlen, payload + hlen,
                                    (Py_ssize_t)(total - hlen));
        if (item == NULL) goto fail;
        if (items == NULL || sid != cur_sid) {
            if (items != NULL) {
                PyObject *g = Py_BuildValue("(lNn)", cur_sid, items, cur_bytes);
                items = NULL;
                if (g == NULL || PyList_Append(groups, g) < 0) {
                    Py_XDECREF(g);
                    Py_DECREF(item);
                    goto fail;
                }
                Py_DECREF(g);
            }
            items = PyList_New(0);
            if (items == NULL) {
                Py_DECREF(item);
                goto fail;
            }
            cur_sid = (long)sid;
            cur_bytes = 0;
        }
        int app = PyList_Append(items, item);
        Py_DECREF(item);
        if (app < 0) goto fail;
        cur_bytes += (Py_ssize_t)(total - hlen);
        pos += frame;
    }
    if (items != NULL) {
        PyObject *g = Py_BuildValue("(lNn)", cur_sid, items, cur_bytes);
        items = NULL;
        if (g == NULL || PyList_Append(groups, g) < 0) {
            Py_XDECREF(g);
            goto fail;
        }
        Py_DECREF(g);
    }
    return Py_BuildValue("(nNn)", pos, groups, other);
fail:
    Py_XDECREF(items);
    Py_DECREF(groups);
    return NULL;
}

static PyObject *configure_nats(PyObject *self, PyObject *message) {
    Py_INCREF(message);
    Py_XSETREF(cfg_message, message);
    if (msg_kwnames == NULL) {
        msg_kwnames = Py_BuildValue("(sssssss)", "data", "stream_seq", "timestamp_ns", "ack",
                                    "subject", "delivered", "size");
        if (msg_kwnames == NULL) return NULL;
    }
    if (msg_kwnames_h == NULL) {
        msg_kwnames_h = Py_BuildValue("(ssssssss)", "data", "stream_seq", "timestamp_ns", "ack",
                                      "subject", "delivered", "size", "headers");
        if (msg_kwnames_h == NULL) return NULL;
    }
    Py_RETURN_NONE;
}

/* configure(decode, encode, tenants, actions, valid, prepared, process, event_id_for, sha256) */
static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "configure takes 9 arguments");
        return NULL;
    }
    if (!PySet_Check(args[2]) || !PySet_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "tenants and actions must be sets");
        return NULL;
    }
    PyObject **slots[9] = {&cfg_decode, &cfg_encode, &cfg_tenants, &cfg_actions, &cfg_valid,
                           &cfg_prepared, &cfg_process, &cfg_event_id_for, &cfg_sha256};
    for (int i = 0; i < 9; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    Py_RETURN_NONE;
}

static PyObject *counts(PyObject *self, PyObject *unused) {
    return Py_BuildValue("(KK)", n_compiled, n_pure);
}

static PyMethodDef methods[] = {
    {"counts", counts, METH_NOARGS,
     "counts() -> (messages prepared by the compiled path, messages handed to the pure one)."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(decode, encode, tenants, actions, valid, prepared, process, event_id_for, "
     "sha256): the Python objects the hot path uses (pipeline/fastpath.py calls it)."},
    {"prepare_batch", (PyCFunction)(void (*)(void))prepare_batch, METH_FASTCALL,
     "prepare_batch(msgs, now, limits, now_us, low_us, high_us, base_subject) -> list of "
     "Valid | Dead, as pipeline.stages.process of each message."},
    {"scan_msgs", (PyCFunction)(void (*)(void))scan_msgs, METH_FASTCALL,
     "scan_msgs(buf, sinks) -> (used, groups, other): MSG frames of the sids in sinks."},
    {"configure_nats", configure_nats, METH_O,
     "configure_nats(Message): the type scan_msgs builds (pipeline.stages.Message)."},
    {"defer_split", defer_split, METH_O,
     "defer_split(msgs) -> (items, eager): per message a Pending or None (prepare it now), "
     "and the indices of the None ones; as pipeline.stages.defer_batch decides."},
    {"configure_defer", configure_defer, METH_O,
     "configure_defer(Pending): the type defer_split builds (pipeline.stages.Pending)."},
    {"claims_copy", (PyCFunction)claims_copy, METH_O,
     "claims_copy(items) -> bytes: as pipeline.chain.claims_copy."},
    {"chain_copy", (PyCFunction)(void (*)(void))chain_copy, METH_FASTCALL,
     "chain_copy(items, heads) -> (by_month, moved): as pipeline.chain.chain_copy."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "pipeline._fastpath",
    "The pipeline's per-batch hot path in C (see pipeline/fastpath.py).", -1, methods,
};

#define INTERN(var, text)                                   \
    do {                                                    \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                                    \
    } while (0)

PyMODINIT_FUNC PyInit__fastpath(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    INTERN(s_data, "data");
    INTERN(s_timestamp_ns, "timestamp_ns");
    INTERN(s_subject, "subject");
    INTERN(s_tenant_id, "tenant_id");
    INTERN(s_action, "action");
    INTERN(s_actor, "actor");
    INTERN(s_type, "type");
    INTERN(s_id, "id");
    INTERN(s_display_name, "display_name");
    INTERN(s_category, "category");
    INTERN(s_severity, "severity");
    INTERN(s_primary_resource, "primary_resource");
    INTERN(s_related_resources, "related_resources");
    INTERN(s_description, "description");
    INTERN(s_metadata, "metadata");
    INTERN(s_changes, "changes");
    INTERN(s_occurred_at, "occurred_at");
    INTERN(s_ip, "ip");
    INTERN(s_user_agent, "user_agent");
    INTERN(s_request_id, "request_id");
    INTERN(s_trace_id, "trace_id");
    INTERN(s_int, "int");
    INTERN(s_utcoffset, "utcoffset");
    INTERN(s_canonical, "canonical");
    INTERN(s_row, "row");
    INTERN(s_seq_at, "seq_at");
    INTERN(s_occurred_us, "occurred_us");
    INTERN(s_digest, "digest");
    INTERN(s_unspecified, "ACTOR_TYPE_UNSPECIFIED");
    INTERN(s_stream_seq, "stream_seq");
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
#ifdef AUDIT_WITH_OPENSSL
    if (PyModule_AddStringConstant(m, "SHA256", "OpenSSL") < 0) {
#else
    if (PyModule_AddStringConstant(m, "SHA256", "hashlib") < 0) {
#endif
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
