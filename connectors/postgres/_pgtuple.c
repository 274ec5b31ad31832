/*
 * _pgtuple: the connector's per-value loops in C (optional; the pure-Python code is the reference).
 *
 * Why: the stream's hot path spends about three quarters of its Python time walking pgoutput
 * TupleData (unpack a length, slice, decode, convert — ~16 values per change) and pure Python is at
 * its floor there. These functions do the same walk in C and return exactly the objects the Python
 * functions return; whenever anything is unusual they return None so that the caller falls back to
 * the Python path, which then produces the result (or raises the proper error) itself. Once that walk
 * was in C, building the envelope dicts, serialising them and the per-event Python of the stream loop
 * were the larger part: change_event / read_event / change_batch write whole events as JSON bytes.
 *
 *   configure(to_bool, to_date_days, to_zoned_timestamp, memo_size)
 *                                              the converters recognised (and done in C in their common
 *                                              case), the memo size limit
 *   set_unchanged(marker)                      pgoutput.UNCHANGED (pgoutput registers it when imported)
 *   fast_row(buf, pos, fields)                 == envelope._fast_row (Python): (dict, pos) or None
 *   tuple_values(buf, pos)                     == pgoutput._tuple on well-formed data: (list, pos);
 *                                              None when the Python decoder must raise
 *   read_row(values, fields)                   == the conversion loop of EventBuilder.iter_read_values:
 *                                              dict, or None when values do not match fields
 *   split_copy(data)                           == snapshot.split_copy_text on COPY text without
 *                                              backslashes: list of lists of str; None otherwise
 *   set_dumps(orjson.dumps)                    what serialises the values the JSON writer does not know
 *   change_event(buf, ctx, lsn, ...)           == EventBuilder.fast_change without schemas: the finished
 *                                              (op, key bytes, value bytes), or None (see below)
 *   read_event(values, fields, names, ...)     == one iteration of iter_read_values without schemas
 *   change_batch(items, start, rels, ...)      the stream loop's common case over a run of read-batch
 *                                              items: change_event + produce() per change
 *   set_libpq / receive                        ReplicationConnection.read_batch's read loop over libpq
 *                                              (see the sections above set_dumps)
 *   copy_out(pgconn_ptr)                       snapshot._copy_rows's COPY OUT loop over the same libpq
 *   copy_lines / copy_batch                    a snapshot chunk kept as its COPY text: read_event +
 *                                              produce() per row, straight from the bytes
 *
 * ``fields`` is TableMeta._fields: a tuple of (name, converter or None, memo dict or None). Converters
 * done in C: None (text as is), int (int2/int4/int8/oid text without sign tricks, at most 18 digits),
 * to_bool, to_date_days (plain YYYY-MM-DD) and to_zoned_timestamp (the UTC "…+00" form, precision 6);
 * anything else, or any other text, goes to the Python converter, through its memo if it has one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <ctype.h>
#include <stdint.h>
#include <string.h>

static PyObject *g_to_bool = NULL;     /* convert.to_bool */
static PyObject *g_to_date = NULL;     /* convert.to_date_days */
static PyObject *g_to_zts = NULL;      /* convert.to_zoned_timestamp (precision 6) */
static PyObject *g_unchanged = NULL;   /* pgoutput.UNCHANGED */
static Py_ssize_t g_memo_size = 8192;

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* '-'? digit{1,18} → int; NULL without an error set when the text is anything else. */
static PyObject *parse_small_int(const char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    int neg = 0;
    if (n > 0 && p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (n - i < 1 || n - i > 18)
        return NULL;
    long long v = 0;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < '0' || c > '9')
            return NULL;
        v = v * 10 + (c - '0');
    }
    return PyLong_FromLongLong(neg ? -v : v);
}

static inline int digits(const char *p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* to_date_days for "YYYY-MM-DD" with year 1..9999 and a real day of that month (what
 * date.fromisoformat accepts in that form): days since 1970-01-01. NULL, no error: anything else. */
static PyObject *date_days(const char *p, Py_ssize_t n) {
    int y, m, d;
    if (n != 10 || p[4] != '-' || p[7] != '-' || !digits(p, 4, &y) || !digits(p + 5, 2, &m) ||
        !digits(p + 8, 2, &d) || y < 1 || m < 1 || m > 12 || d < 1)
        return NULL;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[m - 1] + (m == 2 && leap))
        return NULL;
    /* days from civil (proleptic Gregorian), as convert._days_from_civil */
    long yy = y - (m <= 2);
    long era = yy / 400;  /* yy >= 0 here */
    long yoe = yy - era * 400;
    long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return PyLong_FromLong(era * 146097 + doe - 719468);
}

/* to_zoned_timestamp's own fast path, character for character: "YYYY-MM-DD HH:MM:SS[.f*]+00" →
 * "YYYY-MM-DDTHH:MM:SS.ffffffZ" (fraction padded/cut to 6). ASCII only (so bytes are characters). */
static PyObject *zoned_ts(const char *p, Py_ssize_t n) {
    if (n < 22 || n > 64 || p[n - 3] != '+' || p[n - 2] != '0' || p[n - 1] != '0' || p[4] != '-' || p[10] != ' ')
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return NULL;
    const char *body = p + 11;
    Py_ssize_t blen = n - 14, dot = -1;
    for (Py_ssize_t i = 0; i < blen; i++)
        if (body[i] == '.') {
            dot = i;
            break;
        }
    Py_ssize_t base_len = dot >= 0 ? dot : blen;
    const char *frac = dot >= 0 ? body + dot + 1 : body + blen;
    Py_ssize_t frac_len = dot >= 0 ? blen - dot - 1 : 0;
    char out[96];
    Py_ssize_t k = 0;
    memcpy(out, p, 10);
    k = 10;
    out[k++] = 'T';
    memcpy(out + k, body, base_len);
    k += base_len;
    out[k++] = '.';
    for (int i = 0; i < 6; i++)
        out[k++] = i < frac_len ? frac[i] : '0';
    out[k++] = 'Z';
    return PyUnicode_DecodeASCII(out, k, NULL);
}

/*
 * One text value → its JSON value. ``p``/``n`` are its UTF-8 bytes (or NULL when unknown); ``text`` is
 * the str when the caller already has it (borrowed, may be NULL: decoded here when needed).
 * Returns a new reference, or NULL with an exception set.
 */
static PyObject *convert_value(const char *p, Py_ssize_t n, PyObject *text, PyObject *conv, PyObject *memo) {
    if (conv == Py_None) {
        if (text != NULL) {
            Py_INCREF(text);
            return text;
        }
        return PyUnicode_DecodeUTF8(p, n, NULL);
    }
    if (p != NULL) {
        if (conv == (PyObject *)&PyLong_Type) {
            PyObject *r = parse_small_int(p, n);
            if (r != NULL || PyErr_Occurred())
                return r;
        } else if (conv == g_to_bool && n == 1 && (p[0] == 't' || p[0] == 'f')) {
            /* to_bool(s) is s == "t" */
            return Py_NewRef(p[0] == 't' ? Py_True : Py_False);
        } else if (conv == g_to_date) {
            PyObject *r = date_days(p, n);
            if (r != NULL || PyErr_Occurred())
                return r;
        } else if (conv == g_to_zts) {
            PyObject *r = zoned_ts(p, n);
            if (r != NULL || PyErr_Occurred())
                return r;
        }
    }
    PyObject *owned = NULL;
    if (text == NULL) {
        owned = text = PyUnicode_DecodeUTF8(p, n, NULL);
        if (text == NULL)
            return NULL;
    }
    PyObject *r;
    if (memo != Py_None && PyDict_CheckExact(memo)) {
        r = PyDict_GetItemWithError(memo, text);
        if (r != NULL) {
            Py_INCREF(r);
        } else if (PyErr_Occurred()) {
            r = NULL;
        } else {
            if (PyDict_GET_SIZE(memo) >= g_memo_size)
                PyDict_Clear(memo);
            r = PyObject_CallOneArg(conv, text);
            if (r != NULL && PyDict_SetItem(memo, text, r) < 0)
                Py_CLEAR(r);
        }
    } else {
        r = PyObject_CallOneArg(conv, text);
    }
    Py_XDECREF(owned);
    return r;
}

/* Pull (name, conv, memo) out of one entry of ``fields``; 0 when it is not such a 3-tuple. */
static inline int field_parts(PyObject *f, PyObject **name, PyObject **conv, PyObject **memo) {
    if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 3)
        return 0;
    *name = PyTuple_GET_ITEM(f, 0);
    *conv = PyTuple_GET_ITEM(f, 1);
    *memo = PyTuple_GET_ITEM(f, 2);
    return 1;
}

/* A failure inside the walk: an ordinary exception means "let Python do it" (None); anything else
 * (KeyboardInterrupt, MemoryError is an Exception too and is fine to retry) propagates, as in Python. */
static PyObject *fallback_none(void) {
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyObject *fast_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fast_row(buf, pos, fields)");
        return NULL;
    }
    PyObject *fields = args[2];
    if (!PyTuple_CheckExact(fields))
        Py_RETURN_NONE;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return fallback_none();
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return fallback_none();
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t len = view.len;
    Py_ssize_t nf = PyTuple_GET_SIZE(fields);
    PyObject *out = NULL;
    if (pos < 0 || pos + 2 > len || (Py_ssize_t)(((unsigned)buf[pos] << 8) | buf[pos + 1]) != nf)
        goto none;
    pos += 2;
    out = PyDict_New();
    if (out == NULL)
        goto none;
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *name, *conv, *memo, *v;
        if (!field_parts(PyTuple_GET_ITEM(fields, i), &name, &conv, &memo) || pos >= len)
            goto none;
        unsigned char kind = buf[pos];
        if (kind == 't') {
            if (pos + 5 > len)
                goto none;
            Py_ssize_t n = (Py_ssize_t)be32(buf + pos + 1);
            if (n > len - pos - 5)
                goto none;
            v = convert_value((const char *)buf + pos + 5, n, NULL, conv, memo);
            pos += 5 + n;
        } else if (kind == 'n') {
            v = Py_NewRef(Py_None);
            pos += 1;
        } else {
            goto none;  /* 'u' (unchanged TOAST), 'b' (binary) or garbage: the generic path */
        }
        if (v == NULL)
            goto none;
        int rc = PyDict_SetItem(out, name, v);
        Py_DECREF(v);
        if (rc < 0)
            goto none;
    }
    PyBuffer_Release(&view);
    PyObject *res = Py_BuildValue("(Nn)", out, pos);
    return res;
none:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return fallback_none();
}

static PyObject *tuple_values(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "tuple_values(buf, pos)");
        return NULL;
    }
    if (g_unchanged == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_pgtuple.set_unchanged() was not called");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return fallback_none();
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return fallback_none();
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t len = view.len;
    PyObject *out = NULL;
    if (pos < 0 || pos + 2 > len)
        goto none;
    Py_ssize_t nf = (Py_ssize_t)(((unsigned)buf[pos] << 8) | buf[pos + 1]);
    pos += 2;
    out = PyList_New(nf);
    if (out == NULL)
        goto none;
    for (Py_ssize_t i = 0; i < nf; i++) {
        if (pos >= len)
            goto none;
        unsigned char kind = buf[pos];
        PyObject *v;
        if (kind == 't' || kind == 'b') {
            if (pos + 5 > len)
                goto none;
            Py_ssize_t n = (Py_ssize_t)be32(buf + pos + 1);
            if (n > len - pos - 5)
                goto none;
            const char *p = (const char *)buf + pos + 5;
            v = kind == 't' ? PyUnicode_DecodeUTF8(p, n, NULL) : PyBytes_FromStringAndSize(p, n);
            pos += 5 + n;
        } else if (kind == 'n') {
            v = Py_NewRef(Py_None);
            pos += 1;
        } else if (kind == 'u') {
            v = Py_NewRef(g_unchanged);
            pos += 1;
        } else {
            goto none;
        }
        if (v == NULL)
            goto none;
        PyList_SET_ITEM(out, i, v);
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", out, pos);
none:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return fallback_none();
}

static PyObject *read_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_row(values, fields)");
        return NULL;
    }
    PyObject *values = args[0], *fields = args[1];
    if (!PyList_CheckExact(values) || !PyTuple_CheckExact(fields) ||
        PyList_GET_SIZE(values) != PyTuple_GET_SIZE(fields))
        Py_RETURN_NONE;
    Py_ssize_t nf = PyTuple_GET_SIZE(fields);
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *name, *conv, *memo, *v = PyList_GET_ITEM(values, i);
        if (!field_parts(PyTuple_GET_ITEM(fields, i), &name, &conv, &memo) ||
            !(v == Py_None || PyUnicode_CheckExact(v)))
            Py_RETURN_NONE;
    }
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *name = NULL, *conv = NULL, *memo = NULL, *v, *r;
        if (i >= PyList_GET_SIZE(values) || !field_parts(PyTuple_GET_ITEM(fields, i), &name, &conv, &memo)) {
            Py_DECREF(out);  /* only if a converter shrank the list under us */
            PyErr_SetString(PyExc_RuntimeError, "read_row: values changed during conversion");
            return NULL;
        }
        v = PyList_GET_ITEM(values, i);
        if (v == Py_None || conv == Py_None) {
            r = Py_NewRef(v);
        } else {
            const char *p = NULL;
            Py_ssize_t n = 0;
            Py_INCREF(v);  /* a converter is arbitrary code: keep v alive whatever it does */
            if (PyUnicode_CheckExact(v) && PyUnicode_IS_COMPACT_ASCII(v)) {
                p = (const char *)PyUnicode_1BYTE_DATA(v);
                n = PyUnicode_GET_LENGTH(v);
            }
            r = convert_value(p, n, v, conv, memo);  /* errors propagate, as in the Python loop */
            Py_DECREF(v);
        }
        if (r == NULL || PyDict_SetItem(out, name, r) < 0) {
            Py_XDECREF(r);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(r);
    }
    return out;
}

static PyObject *split_copy(PyObject *self, PyObject *arg) {
    if (!PyBytes_CheckExact(arg))
        Py_RETURN_NONE;
    const char *buf = PyBytes_AS_STRING(arg);
    Py_ssize_t len = PyBytes_GET_SIZE(arg);
    /* escapes or \N, an empty chunk or one not ending in a newline: the Python code decides */
    if (len == 0 || buf[len - 1] != '\n' || memchr(buf, '\\', len) != NULL)
        Py_RETURN_NONE;
    PyObject *rows = PyList_New(0);
    if (rows == NULL)
        return NULL;
    const char *line = buf, *end = buf + len - 1;  /* the final newline ends the last line */
    for (;;) {
        const char *eol = memchr(line, '\n', end - line);
        if (eol == NULL)
            eol = end;
        PyObject *row = PyList_New(0);
        if (row == NULL || PyList_Append(rows, row) < 0) {
            Py_XDECREF(row);
            goto fail;
        }
        Py_DECREF(row);  /* rows holds it */
        const char *f = line;
        for (;;) {
            const char *tab = memchr(f, '\t', eol - f);
            const char *fend = tab != NULL ? tab : eol;
            /* '\t' and '\n' never occur inside a multi-byte UTF-8 sequence: decoding per field is
             * decoding the whole text, then splitting it */
            PyObject *v = PyUnicode_DecodeUTF8(f, fend - f, NULL);
            if (v == NULL || PyList_Append(row, v) < 0) {
                Py_XDECREF(v);
                goto fail;
            }
            Py_DECREF(v);
            if (tab == NULL)
                break;
            f = tab + 1;
        }
        if (eol == end)
            break;
        line = eol + 1;
    }
    return rows;
fail:
    Py_DECREF(rows);
    return fallback_none();  /* not UTF-8: the Python code raises its own error */
}

/* ---------------------------------------------------------------------------------------------------
 * Whole events as JSON bytes (API 4). orjson (no options) writes no whitespace, dict keys in insertion
 * order, str with only '"', '\\' and the control characters escaped and everything else (non-ASCII
 * included) as raw UTF-8, and int in decimal: the writer below does exactly that for None, bool, int,
 * str and pgoutput text; any other value is handed to orjson.dumps itself and its bytes spliced in. So
 * the bytes equal orjson.dumps of the dicts the Python path builds (the unit and property tests compare
 * them byte for byte). The envelope's keys are Debezium's; the source block arrives from Python as
 * pre-serialised pieces around its two LSNs.
 */
static PyObject *g_dumps = NULL;       /* orjson.dumps */

typedef struct {
    char *p;
    Py_ssize_t n, cap;
} wbuf;

static int w_grow(wbuf *w, Py_ssize_t extra) {
    Py_ssize_t need = w->n + extra;
    if (need <= w->cap)
        return 1;
    Py_ssize_t cap = w->cap * 2 > need ? w->cap * 2 : need + 256;
    char *p = PyMem_Realloc(w->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    w->p = p;
    w->cap = cap;
    return 1;
}

static inline int w_put(wbuf *w, const char *s, Py_ssize_t n) {
    if (!w_grow(w, n))
        return 0;
    memcpy(w->p + w->n, s, n);
    w->n += n;
    return 1;
}

#define W_LIT(w, s) w_put((w), (s), (Py_ssize_t)(sizeof(s) - 1))

static inline int w_bytes(wbuf *w, PyObject *b) {  /* b: bytes (checked by the caller) */
    return w_put(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
}

static int w_ll(wbuf *w, long long v) {
    char tmp[24];
    int k = 24;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--k] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[--k] = '-';
    return w_put(w, tmp + k, 24 - k);
}

/* A JSON string from valid UTF-8 bytes, escaped as orjson escapes. */
static int w_str(wbuf *w, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (!w_grow(w, n + 2))
        return 0;
    w->p[w->n++] = '"';
    Py_ssize_t run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (!w_put(w, s + run, i - run))
            return 0;
        run = i + 1;
        char e[6] = {'\\', 0, 0, 0, 0, 0};
        int k = 2;
        switch (c) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\t': e[1] = 't'; break;
        case '\n': e[1] = 'n'; break;
        case '\f': e[1] = 'f'; break;
        case '\r': e[1] = 'r'; break;
        default:
            e[1] = 'u'; e[2] = '0'; e[3] = '0'; e[4] = hex[c >> 4]; e[5] = hex[c & 15];
            k = 6;
        }
        if (!w_put(w, e, k))
            return 0;
    }
    if (!w_put(w, s + run, n - run))
        return 0;
    return W_LIT(w, "\"");
}

/* Any JSON value object as orjson.dumps writes it. */
static int w_obj(wbuf *w, PyObject *v) {
    if (v == Py_None)
        return W_LIT(w, "null");
    if (v == Py_True)
        return W_LIT(w, "true");
    if (v == Py_False)
        return W_LIT(w, "false");
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow) {
            if (x == -1 && PyErr_Occurred())
                return 0;
            return w_ll(w, x);
        }
    } else if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);  /* fails for lone surrogates, as orjson does */
        return s != NULL && w_str(w, s, n);
    }
    if (g_dumps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_pgtuple.set_dumps() was not called");
        return 0;
    }
    PyObject *b = PyObject_CallOneArg(g_dumps, v);
    if (b == NULL)
        return 0;
    int ok = PyBytes_Check(b) && w_bytes(w, b);
    Py_DECREF(b);
    if (!ok && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "dumps did not return bytes");
    return ok;
}

/* '-'? digit{1,18}: 1 and *out, else 0 (Python's int() then decides). */
static inline int small_int(const char *p, Py_ssize_t n, long long *out) {
    Py_ssize_t i = 0;
    int neg = 0;
    if (n > 0 && p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (n - i < 1 || n - i > 18)
        return 0;
    long long v = 0;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < '0' || c > '9')
            return 0;
        v = v * 10 + (c - '0');
    }
    *out = neg ? -v : v;
    return 1;
}

/* Check names: a tuple of bytes ('"name":') as long as fields. */
static int names_ok(PyObject *fields, PyObject *names) {
    if (!PyTuple_CheckExact(fields) || !PyTuple_CheckExact(names) || PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(fields))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(names, i)))
            return 0;
    return 1;
}

/* One value in PostgreSQL's text form (UTF-8 bytes p, n) as the JSON its converter gives: 1 = written,
 * 0 = fall back (error maybe set; invalid UTF-8 included, as bytes.decode() would refuse it). */
static int w_text_value(wbuf *w, const char *p, Py_ssize_t n, PyObject *conv, PyObject *memo) {
    long long iv;
    if (conv == Py_None) {
        Py_ssize_t k = 0;
        while (k < n && (unsigned char)p[k] < 0x80)
            k++;
        if (k < n) {  /* not ASCII: only valid UTF-8 passes, as with bytes.decode() */
            PyObject *t = PyUnicode_DecodeUTF8(p, n, NULL);
            if (t == NULL)
                return 0;
            Py_DECREF(t);
        }
        return w_str(w, p, n);
    }
    if (conv == (PyObject *)&PyLong_Type && small_int(p, n, &iv))
        return w_ll(w, iv);
    PyObject *v = convert_value(p, n, NULL, conv, memo);
    if (v == NULL)
        return 0;
    int ok = w_obj(w, v);
    Py_DECREF(v);
    return ok;
}

/*
 * pgoutput TupleData at *pos as a JSON object (what orjson.dumps(_fast_row(...)[0]) gives). Records
 * where each value's JSON starts and ends in w (vs, ve). 1 = written, 0 = fall back (error maybe set).
 */
static int w_tuple(wbuf *w, const unsigned char *buf, Py_ssize_t len, Py_ssize_t *pos_io, PyObject *fields,
                   PyObject *names, Py_ssize_t *vs, Py_ssize_t *ve) {
    Py_ssize_t pos = *pos_io, nf = PyTuple_GET_SIZE(fields);
    if (pos < 0 || pos + 2 > len || (Py_ssize_t)(((unsigned)buf[pos] << 8) | buf[pos + 1]) != nf)
        return 0;
    pos += 2;
    if (!W_LIT(w, "{"))
        return 0;
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *name, *conv, *memo;
        if (!field_parts(PyTuple_GET_ITEM(fields, i), &name, &conv, &memo) || pos >= len)
            return 0;
        if ((i > 0 && !W_LIT(w, ",")) || !w_bytes(w, PyTuple_GET_ITEM(names, i)))
            return 0;
        vs[i] = w->n;
        unsigned char kind = buf[pos];
        if (kind == 'n') {
            if (!W_LIT(w, "null"))
                return 0;
            pos += 1;
        } else if (kind == 't') {
            if (pos + 5 > len)
                return 0;
            Py_ssize_t n = (Py_ssize_t)be32(buf + pos + 1);
            if (n > len - pos - 5)
                return 0;
            const char *p = (const char *)buf + pos + 5;
            pos += 5 + n;
            if (!w_text_value(w, p, n, conv, memo))
                return 0;
        } else {
            return 0;  /* 'u' (unchanged TOAST), 'b' (binary) or garbage: the generic path */
        }
        ve[i] = w->n;
    }
    if (!W_LIT(w, "}"))
        return 0;
    *pos_io = pos;
    return 1;
}

/* The key {"k":v,...} from the value fragments of one row in w: a new bytes object, or NULL. */
static PyObject *key_json(wbuf *w, PyObject *names, PyObject *key_idx, Py_ssize_t *vs, Py_ssize_t *ve) {
    Py_ssize_t nk = PyTuple_GET_SIZE(key_idx), total = 2;
    for (Py_ssize_t j = 0; j < nk; j++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(key_idx, j));
        total += 1 + PyBytes_GET_SIZE(PyTuple_GET_ITEM(names, i)) + ve[i] - vs[i];
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total - (nk > 0 ? 1 : 0));
    if (out == NULL)
        return NULL;
    char *q = PyBytes_AS_STRING(out);
    *q++ = '{';
    for (Py_ssize_t j = 0; j < nk; j++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(key_idx, j));
        PyObject *nm = PyTuple_GET_ITEM(names, i);
        if (j > 0)
            *q++ = ',';
        memcpy(q, PyBytes_AS_STRING(nm), PyBytes_GET_SIZE(nm));
        q += PyBytes_GET_SIZE(nm);
        memcpy(q, w->p + vs[i], ve[i] - vs[i]);
        q += ve[i] - vs[i];
    }
    *q = '}';
    return out;
}

/* key_idx: a tuple of ints, each a valid column index. */
static int key_idx_ok(PyObject *key_idx, Py_ssize_t nf) {
    if (!PyTuple_CheckExact(key_idx))
        return 0;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(key_idx); j++) {
        PyObject *o = PyTuple_GET_ITEM(key_idx, j);
        if (!PyLong_CheckExact(o))
            return 0;
        Py_ssize_t i = PyLong_AsSsize_t(o);
        if (i < 0 || i >= nf) {
            PyErr_Clear();
            return 0;
        }
    }
    return 1;
}

/*
 * change_event(buf, ctx, lsn, total_order, data_collection_order, tail) -> (op, key bytes | None, value) | None
 * EventBuilder.fast_change without schemas, as bytes. ctx (EventBuilder._c_context, one per transaction
 * and table) = (fields, names, key_idx, fast_keys, src1, src2, src3, tx1, tx2, tx3, tx4):
 *   value = {"before":B,"after":A,"source":src1 LSN src2 LSN src3,"transaction":T,"op":"o" tail
 * with T = tx1 LSN tx2 total_order tx3 data_collection_order tx4 (the id is "<txId>:<LSN>"), or null
 * when tx1 is None. None (no side effect
 * but the converter memos) wherever fast_change returns None, and for anything it cannot write exactly.
 */
static PyObject *change_event(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "change_event(buf, ctx, lsn, total_order, data_collection_order, tail)");
        return NULL;
    }
    PyObject *ctx = args[1];
    if (!PyTuple_CheckExact(ctx) || PyTuple_GET_SIZE(ctx) != 11 || !PyBytes_CheckExact(args[5]))
        Py_RETURN_NONE;
    PyObject *fields = PyTuple_GET_ITEM(ctx, 0), *names = PyTuple_GET_ITEM(ctx, 1), *key_idx = PyTuple_GET_ITEM(ctx, 2);
    PyObject *src1 = PyTuple_GET_ITEM(ctx, 4), *src2 = PyTuple_GET_ITEM(ctx, 5), *src3 = PyTuple_GET_ITEM(ctx, 6);
    PyObject *tx1 = PyTuple_GET_ITEM(ctx, 7), *tx2 = PyTuple_GET_ITEM(ctx, 8), *tx3 = PyTuple_GET_ITEM(ctx, 9);
    PyObject *tx4 = PyTuple_GET_ITEM(ctx, 10);
    int fast_keys = PyTuple_GET_ITEM(ctx, 3) == Py_True;
    int txmeta = tx1 != Py_None;
    if (!PyBytes_CheckExact(src1) || !PyBytes_CheckExact(src2) || !PyBytes_CheckExact(src3) ||
        (txmeta && (!PyBytes_CheckExact(tx1) || !PyBytes_CheckExact(tx2) || !PyBytes_CheckExact(tx3) ||
                    !PyBytes_CheckExact(tx4))) ||
        !names_ok(fields, names) || !key_idx_ok(key_idx, PyTuple_GET_SIZE(fields)) ||
        !PyLong_CheckExact(args[2]) || !PyLong_CheckExact(args[3]) || !PyLong_CheckExact(args[4]))
        return fallback_none();
    int overflow = 0;
    long long lsn = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (overflow || (lsn == -1 && PyErr_Occurred()))
        return fallback_none();
    long long total_order = PyLong_AsLongLongAndOverflow(args[3], &overflow);
    if (overflow || (total_order == -1 && PyErr_Occurred()))
        return fallback_none();
    long long dco = PyLong_AsLongLongAndOverflow(args[4], &overflow);
    if (overflow || (dco == -1 && PyErr_Occurred()))
        return fallback_none();
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return fallback_none();
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t len = view.len, nf = PyTuple_GET_SIZE(fields), nk = PyTuple_GET_SIZE(key_idx);
    wbuf w = {NULL, 0, 0};
    Py_ssize_t *offs = PyMem_Malloc(sizeof(Py_ssize_t) * (4 * nf + 1));
    PyObject *key = NULL, *value = NULL;
    const char *op;
    if (offs == NULL || !w_grow(&w, 1024) || len < 6)
        goto none;
    Py_ssize_t *bs = offs, *be = offs + nf, *as = offs + 2 * nf, *ae = offs + 3 * nf, *ks = as, *ke = ae;
    Py_ssize_t pos = 6;
    if (!W_LIT(&w, "{\"before\":"))
        goto none;
    unsigned char kind = buf[0];
    if (kind == 'I') {
        op = "c";
        if (buf[5] != 'N' || !W_LIT(&w, "null,\"after\":") || !w_tuple(&w, buf, len, &pos, fields, names, as, ae))
            goto none;
    } else if (kind == 'U') {
        op = "u";
        unsigned char marker = buf[5];
        int have_old = 0;
        if (marker == 'O') {
            if (!w_tuple(&w, buf, len, &pos, fields, names, bs, be) || pos >= len)
                goto none;
            have_old = 1;
            marker = buf[pos++];
        } else if (!W_LIT(&w, "null")) {
            goto none;
        }
        if (marker != 'N' || !W_LIT(&w, ",\"after\":") || !w_tuple(&w, buf, len, &pos, fields, names, as, ae))
            goto none;
        if (have_old && nk > 0) {
            if (!fast_keys)
                goto none;
            for (Py_ssize_t j = 0; j < nk; j++) {  /* a changed key: delete + create, the generic path */
                Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(key_idx, j));
                if (be[i] - bs[i] != ae[i] - as[i] || memcmp(w.p + bs[i], w.p + as[i], be[i] - bs[i]) != 0)
                    goto none;
            }
        }
    } else if (kind == 'D') {
        op = "d";
        if (buf[5] != 'O' || !w_tuple(&w, buf, len, &pos, fields, names, bs, be) || !W_LIT(&w, ",\"after\":null"))
            goto none;
        ks = bs;
        ke = be;
    } else {
        goto none;
    }
    if (pos > len)
        goto none;
    if (!W_LIT(&w, ",\"source\":") || !w_bytes(&w, src1) || !w_ll(&w, lsn) || !w_bytes(&w, src2) ||
        !w_ll(&w, lsn) || !w_bytes(&w, src3) || !W_LIT(&w, ",\"transaction\":"))
        goto none;
    if (txmeta ? (!w_bytes(&w, tx1) || !w_ll(&w, lsn) || !w_bytes(&w, tx2) || !w_ll(&w, total_order) ||
                  !w_bytes(&w, tx3) || !w_ll(&w, dco) || !w_bytes(&w, tx4))
               : !W_LIT(&w, "null"))
        goto none;
    if (!W_LIT(&w, ",\"op\":\"") || !w_put(&w, op, 1) || !W_LIT(&w, "\"") || !w_bytes(&w, args[5]))
        goto none;
    if (nk > 0) {
        key = key_json(&w, names, key_idx, ks, ke);
        if (key == NULL)
            goto none;
    } else {
        key = Py_NewRef(Py_None);
    }
    value = PyBytes_FromStringAndSize(w.p, w.n);
    if (value == NULL)
        goto none;
    PyMem_Free(offs);
    PyMem_Free(w.p);
    PyBuffer_Release(&view);
    return Py_BuildValue("(sNN)", op, key, value);
none:
    Py_XDECREF(key);
    PyMem_Free(offs);
    PyMem_Free(w.p);
    PyBuffer_Release(&view);
    return fallback_none();
}

/*
 * read_event(values, fields, names, key_idx, head, tail) -> (key bytes | None, value bytes) | None
 * A snapshot row: value = head + the row as JSON + tail (head/tail: the envelope around "after",
 * serialised once per table). None, as read_row, when values do not match fields; conversion errors
 * propagate, as in the Python loop.
 */
static PyObject *read_event(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "read_event(values, fields, names, key_idx, head, tail)");
        return NULL;
    }
    PyObject *values = args[0], *fields = args[1], *names = args[2], *key_idx = args[3];
    if (!PyList_CheckExact(values) || !names_ok(fields, names) || PyList_GET_SIZE(values) != PyTuple_GET_SIZE(fields) ||
        !key_idx_ok(key_idx, PyTuple_GET_SIZE(fields)) || !PyBytes_CheckExact(args[4]) || !PyBytes_CheckExact(args[5]))
        Py_RETURN_NONE;
    Py_ssize_t nf = PyTuple_GET_SIZE(fields);
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *name, *conv, *memo, *v = PyList_GET_ITEM(values, i);
        if (!field_parts(PyTuple_GET_ITEM(fields, i), &name, &conv, &memo) || !(v == Py_None || PyUnicode_CheckExact(v)))
            Py_RETURN_NONE;
    }
    wbuf w = {NULL, 0, 0};
    Py_ssize_t *offs = PyMem_Malloc(sizeof(Py_ssize_t) * (2 * nf + 1));
    PyObject *key = NULL, *value = NULL;
    if (offs == NULL || !w_grow(&w, 1024) || !w_bytes(&w, args[4]) || !W_LIT(&w, "{"))
        goto fail;
    Py_ssize_t *vs = offs, *ve = offs + nf;
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *name = NULL, *conv = NULL, *memo = NULL, *v;
        if (i >= PyList_GET_SIZE(values) || !field_parts(PyTuple_GET_ITEM(fields, i), &name, &conv, &memo)) {
            PyErr_SetString(PyExc_RuntimeError, "read_event: values changed during conversion");
            goto fail;
        }
        if ((i > 0 && !W_LIT(&w, ",")) || !w_bytes(&w, PyTuple_GET_ITEM(names, i)))
            goto fail;
        vs[i] = w.n;
        v = PyList_GET_ITEM(values, i);
        Py_INCREF(v);  /* a converter is arbitrary code: keep v alive whatever it does */
        int ok;
        if (v == Py_None || conv == Py_None) {
            ok = w_obj(&w, v);
        } else {
            const char *p = NULL;
            Py_ssize_t n = 0;
            long long iv;
            if (PyUnicode_IS_COMPACT_ASCII(v)) {
                p = (const char *)PyUnicode_1BYTE_DATA(v);
                n = PyUnicode_GET_LENGTH(v);
            }
            if (p != NULL && conv == (PyObject *)&PyLong_Type && small_int(p, n, &iv)) {
                ok = w_ll(&w, iv);
            } else {
                PyObject *r = convert_value(p, n, v, conv, memo);
                ok = r != NULL && w_obj(&w, r);
                Py_XDECREF(r);
            }
        }
        Py_DECREF(v);
        if (!ok)
            goto fail;
        ve[i] = w.n;
    }
    if (!W_LIT(&w, "}") || !w_bytes(&w, args[5]))
        goto fail;
    if (PyTuple_GET_SIZE(key_idx) > 0) {
        key = key_json(&w, names, key_idx, vs, ve);
        if (key == NULL)
            goto fail;
    } else {
        key = Py_NewRef(Py_None);
    }
    value = PyBytes_FromStringAndSize(w.p, w.n);
    if (value == NULL)
        goto fail;
    PyMem_Free(offs);
    PyMem_Free(w.p);
    PyObject *res = PyTuple_Pack(2, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return res;
fail:
    Py_XDECREF(key);
    PyMem_Free(offs);
    PyMem_Free(w.p);
    return fallback_none();  /* the Python loop redoes the row and raises its own error */
}

/* produce(topic, value, key): 1 done, 0 BufferError (cleared: the caller hands the record back), -1 error. */
static int produce3(PyObject *produce, PyObject *topic, PyObject *value, PyObject *key) {
    PyObject *a[3] = {topic, value, key};
    PyObject *r = PyObject_Vectorcall(produce, a, 3, NULL);
    if (r != NULL) {
        Py_DECREF(r);
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/*
 * change_batch(items, start, rels, tx, tail, produce, tombstones) -> (next, n_c, n_u, n_d, pending)
 * The stream loop's common case for a run of read-batch items: from items[start] on, every
 * Insert/Update/Delete (lsn, payload) of a relation in ``rels`` (relid → (topic, table name, ctx),
 * filled by the stream loop for the current transaction) that change_event writes is produced with
 * produce(topic, value, key) — and a delete's tombstone produce(topic, None, key) when ``tombstones``
 * and a key — counting the transaction's events (``tx``: the TxContext with transaction metadata, else
 * None). Stops before the first item it does not take (another message, an unknown relation, anything
 * change_event declines) and returns its index, the op counts and ``pending``: None, or the records of
 * the last event whose produce() raised BufferError (already counted), for the caller's waiting produce.
 */
static PyObject *change_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "change_batch(items, start, rels, tx, tail, produce, tombstones)");
        return NULL;
    }
    PyObject *items = args[0], *rels = args[2], *tx = args[3], *tail = args[4], *produce = args[5];
    int tombstones = PyObject_IsTrue(args[6]);
    Py_ssize_t j = PyLong_AsSsize_t(args[1]);
    if (tombstones < 0 || (j == -1 && PyErr_Occurred()))
        return NULL;
    if (!PyList_CheckExact(items) || !PyDict_CheckExact(rels) || !PyBytes_CheckExact(tail) || j < 0)
        return Py_BuildValue("(niiiO)", j, 0, 0, 0, Py_None);
    PyObject *per_table = NULL, *total_obj = NULL, *pending = Py_None, *res = NULL;
    long long total = 0;
    long counts[3] = {0, 0, 0};
    int txmeta = tx != Py_None, failed = 0, counting = 0;
    Py_INCREF(pending);
    if (txmeta) {
        per_table = PyObject_GetAttrString(tx, "per_table");
        total_obj = PyObject_GetAttrString(tx, "total_order");
        if (per_table == NULL || total_obj == NULL || !PyDict_CheckExact(per_table) || !PyLong_CheckExact(total_obj)) {
            PyErr_Clear();
            res = Py_BuildValue("(niiiO)", j, 0, 0, 0, Py_None);
            goto out;
        }
        total = PyLong_AsLongLong(total_obj);
        if (total == -1 && PyErr_Occurred())
            goto fail;
        counting = 1;
    }
    for (; j < PyList_GET_SIZE(items); j++) {
        PyObject *item = PyList_GET_ITEM(items, j);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            break;
        PyObject *lsn = PyTuple_GET_ITEM(item, 0), *payload = PyTuple_GET_ITEM(item, 1);
        if (!PyBytes_CheckExact(payload) || PyBytes_GET_SIZE(payload) < 6)
            break;
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(payload);
        if (p[0] != 'I' && p[0] != 'U' && p[0] != 'D')
            break;
        PyObject *relid = PyLong_FromUnsignedLong(be32(p + 1));
        if (relid == NULL)
            goto fail;
        PyObject *entry = PyDict_GetItemWithError(rels, relid);  /* borrowed */
        Py_DECREF(relid);
        if (entry == NULL) {
            if (PyErr_Occurred())
                goto fail;
            break;
        }
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3)
            break;
        PyObject *topic = PyTuple_GET_ITEM(entry, 0), *name = PyTuple_GET_ITEM(entry, 1);
        long long dco = 0;
        if (txmeta) {
            PyObject *n = PyDict_GetItemWithError(per_table, name);
            if (n == NULL && PyErr_Occurred())
                goto fail;
            dco = n == NULL ? 1 : PyLong_AsLongLong(n) + 1;
            if (dco == 0 && PyErr_Occurred())
                goto fail;
        }
        PyObject *t1 = PyLong_FromLongLong(total + 1), *t2 = PyLong_FromLongLong(dco);
        PyObject *ev = NULL;
        if (t1 != NULL && t2 != NULL) {
            PyObject *ea[6] = {payload, PyTuple_GET_ITEM(entry, 2), lsn, t1, t2, tail};
            ev = change_event(NULL, ea, 6);
        }
        Py_XDECREF(t1);
        if (ev == NULL) {
            Py_XDECREF(t2);
            goto fail;
        }
        if (ev == Py_None) {  /* declined: the Python path takes this item */
            Py_DECREF(ev);
            Py_XDECREF(t2);
            break;
        }
        if (txmeta) {
            total += 1;
            int rc = PyDict_SetItem(per_table, name, t2);
            if (rc < 0) {
                Py_DECREF(t2);
                Py_DECREF(ev);
                goto fail;
            }
        }
        Py_DECREF(t2);
        PyObject *op = PyTuple_GET_ITEM(ev, 0), *key = PyTuple_GET_ITEM(ev, 1), *value = PyTuple_GET_ITEM(ev, 2);
        char o = PyUnicode_READ_CHAR(op, 0);
        counts[o == 'c' ? 0 : o == 'u' ? 1 : 2]++;
        int stone = o == 'd' && tombstones && key != Py_None;
        int rc = produce3(produce, topic, value, key);
        if (rc > 0 && stone) {
            rc = produce3(produce, topic, Py_None, key);
            if (rc == 0) {  /* the value is in; its tombstone is not */
                Py_SETREF(pending, Py_BuildValue("[(OOOO)]", topic, key, Py_None, Py_None));
                rc = pending == NULL ? -1 : 0;
            }
        } else if (rc == 0) {
            Py_SETREF(pending, stone ? Py_BuildValue("[(OOOO)(OOOO)]", topic, key, value, Py_None, topic, key,
                                                     Py_None, Py_None)
                                     : Py_BuildValue("[(OOOO)]", topic, key, value, Py_None));
            rc = pending == NULL ? -1 : 0;
        }
        Py_DECREF(ev);
        if (rc < 0)
            goto fail;
        if (rc == 0) {  /* hand the rest back: the caller waits for room */
            j++;
            break;
        }
    }
    res = Py_BuildValue("(nlllO)", j, counts[0], counts[1], counts[2], pending);
    goto out;
fail:
    failed = 1;
out:
    if (counting) {  /* the events written count, even on error */
        PyObject *err_type, *err_value, *err_tb;
        PyErr_Fetch(&err_type, &err_value, &err_tb);
        PyObject *t = PyLong_FromLongLong(total);
        if (t == NULL || PyObject_SetAttrString(tx, "total_order", t) < 0) {
            Py_XDECREF(t);
            Py_XDECREF(err_type);
            Py_XDECREF(err_value);
            Py_XDECREF(err_tb);
            Py_XDECREF(res);
            res = NULL;
            failed = 1;
        } else {
            Py_DECREF(t);
            PyErr_Restore(err_type, err_value, err_tb);
        }
    }
    Py_XDECREF(per_table);
    Py_XDECREF(total_obj);
    Py_XDECREF(pending);
    if (failed) {
        Py_XDECREF(res);
        return NULL;
    }
    return res;
}

/* ---------------------------------------------------------------------------------------------------
 * Snapshot chunks kept as COPY text (API 8). split_copy made a str per value and a list per row, which
 * read_event then read back value by value, and the Python loop around it called produce() once per
 * row; copy_batch writes each row's record straight from the COPY bytes and produces it, as
 * change_batch does for the stream. It unescapes what COPY TO writes (\N for NULL, \b \f \n \r \t \v
 * and \\, any other character after a backslash standing for itself, as parse_copy_line reads them)
 * and leaves a row with an octal or hex escape to the Python path.
 *
 *   copy_lines(data) -> list[int] | None
 *       the offset of every line's start and len(data) last; None when data is empty or does not end
 *       in a newline (the Python path decides)
 *   copy_batch(data, starts, start, stop, fields, names, key_idx, head, tail, produce, topic)
 *       -> (next, pending)
 *       rows start..stop-1 (row i: data[starts[i]:starts[i+1] - 1]): each row's record as read_event
 *       writes it from the values parse_copy_line gives, produced with produce(topic, value, key).
 *       Stops before a row it does not write (a field count other than len(fields), an octal or hex
 *       escape, anything read_event declines, conversion errors included) and returns that row's index
 *       with pending None: the caller's Python path then produces it or raises its error. When
 *       produce() raises BufferError, returns the next index and pending = (key, value), the record
 *       the caller still has to produce once there is room.
 */
static PyObject *copy_lines(PyObject *self, PyObject *arg) {
    if (!PyBytes_CheckExact(arg))
        Py_RETURN_NONE;
    const char *buf = PyBytes_AS_STRING(arg);
    Py_ssize_t len = PyBytes_GET_SIZE(arg);
    if (len == 0 || buf[len - 1] != '\n')
        Py_RETURN_NONE;
    PyObject *starts = PyList_New(0);
    if (starts == NULL)
        return NULL;
    const char *line = buf, *end = buf + len;
    while (line <= end) {
        PyObject *o = PyLong_FromSsize_t(line - buf);
        if (o == NULL || PyList_Append(starts, o) < 0) {
            Py_XDECREF(o);
            Py_DECREF(starts);
            return NULL;
        }
        Py_DECREF(o);
        if (line == end)
            break;
        line = (const char *)memchr(line, '\n', end - line) + 1;  /* found: the data ends in one */
    }
    return starts;
}

/* The text of one COPY field f[0:n], unescaped into *scratch when it has backslashes: 1 with (*p, *n)
 * the value's bytes, 2 for \N (NULL), 0 for an escape the Python path must read (octal, hex). */
static int copy_field(const char *f, Py_ssize_t n, wbuf *scratch, const char **p_out, Py_ssize_t *n_out) {
    if (n == 2 && f[0] == '\\' && f[1] == 'N')
        return 2;
    const char *bs = memchr(f, '\\', n);
    if (bs == NULL) {
        *p_out = f;
        *n_out = n;
        return 1;
    }
    scratch->n = 0;
    if (!w_grow(scratch, n))
        return 0;
    Py_ssize_t i = 0;
    while (i < n) {
        char c = f[i];
        if (c != '\\' || i + 1 == n) {  /* a backslash ending the field stands for itself, as in Python */
            scratch->p[scratch->n++] = c;
            i++;
            continue;
        }
        char e = f[i + 1];
        if ((e >= '0' && e <= '7') || (e == 'x' && i + 2 < n && isxdigit((unsigned char)f[i + 2])))
            return 0;
        switch (e) {
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'v': c = '\v'; break;
        default: c = e;  /* \\ and any other character: the character itself */
        }
        scratch->p[scratch->n++] = c;
        i += 2;
    }
    *p_out = scratch->p;
    *n_out = scratch->n;
    return 1;
}

/* One COPY line as a JSON object of its fields, value offsets in vs/ve: 1 written, 0 fall back. */
static int w_copy_row(wbuf *w, wbuf *scratch, const char *line, const char *eol, PyObject *fields, PyObject *names,
                      Py_ssize_t *vs, Py_ssize_t *ve) {
    Py_ssize_t nf = PyTuple_GET_SIZE(fields);
    const char *f = line;
    if (!W_LIT(w, "{"))
        return 0;
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *name, *conv, *memo;
        if (f == NULL || !field_parts(PyTuple_GET_ITEM(fields, i), &name, &conv, &memo))
            return 0;  /* fewer fields than columns */
        const char *tab = memchr(f, '\t', eol - f);
        const char *fend = tab != NULL ? tab : eol;
        const char *p = NULL;
        Py_ssize_t n = 0;
        int kind = copy_field(f, fend - f, scratch, &p, &n);
        if (kind == 0 || (i > 0 && !W_LIT(w, ",")) || !w_bytes(w, PyTuple_GET_ITEM(names, i)))
            return 0;
        vs[i] = w->n;
        if (kind == 2 ? !W_LIT(w, "null") : !w_text_value(w, p, n, conv, memo))
            return 0;
        ve[i] = w->n;
        f = tab != NULL ? tab + 1 : NULL;
    }
    if (f != NULL)
        return 0;  /* more fields than columns */
    return W_LIT(w, "}");
}

static PyObject *copy_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError,
                        "copy_batch(data, starts, start, stop, fields, names, key_idx, head, tail, produce, topic)");
        return NULL;
    }
    PyObject *data = args[0], *starts = args[1], *fields = args[4], *names = args[5], *key_idx = args[6];
    PyObject *head = args[7], *tail = args[8], *produce = args[9], *topic = args[10];
    Py_ssize_t i = PyLong_AsSsize_t(args[2]), stop = PyLong_AsSsize_t(args[3]);
    if ((i == -1 || stop == -1) && PyErr_Occurred())
        return NULL;
    if (!PyBytes_CheckExact(data) || !PyList_CheckExact(starts) || i < 0 || stop < i ||
        stop >= PyList_GET_SIZE(starts) || !names_ok(fields, names) ||
        !key_idx_ok(key_idx, PyTuple_GET_SIZE(fields)) || !PyBytes_CheckExact(head) || !PyBytes_CheckExact(tail))
        return Py_BuildValue("(nO)", i, Py_None);
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data), nf = PyTuple_GET_SIZE(fields);
    PyObject *pending = NULL;
    wbuf w = {NULL, 0, 0}, scratch = {NULL, 0, 0};
    Py_ssize_t *offs = PyMem_Malloc(sizeof(Py_ssize_t) * (2 * nf + 1));
    if (offs == NULL || !w_grow(&w, 1024)) {
        PyMem_Free(offs);
        PyMem_Free(w.p);
        return PyErr_NoMemory();
    }
    Py_ssize_t *vs = offs, *ve = offs + nf;
    for (; i < stop; i++) {
        if (i + 1 >= PyList_GET_SIZE(starts))
            break;  /* the list shrank under a callback (produce, a converter): read no further */
        Py_ssize_t a = PyLong_AsSsize_t(PyList_GET_ITEM(starts, i));
        Py_ssize_t b = PyLong_AsSsize_t(PyList_GET_ITEM(starts, i + 1));
        if ((a == -1 || b == -1) && PyErr_Occurred())
            goto fail;
        if (a < 0 || b <= a || b > len || buf[b - 1] != '\n')
            break;  /* not a line of data: the Python path reads it */
        w.n = 0;
        if (!w_bytes(&w, head) || !w_copy_row(&w, &scratch, buf + a, buf + b - 1, fields, names, vs, ve) ||
            !w_bytes(&w, tail)) {
            if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
                goto fail;
            PyErr_Clear();  /* declined: the Python path redoes the row and raises its own error */
            break;
        }
        PyObject *key = PyTuple_GET_SIZE(key_idx) > 0 ? key_json(&w, names, key_idx, vs, ve) : Py_NewRef(Py_None);
        if (key == NULL)
            goto fail;
        PyObject *value = PyBytes_FromStringAndSize(w.p, w.n);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        int rc = produce3(produce, topic, value, key);
        if (rc == 0)
            pending = PyTuple_Pack(2, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0 || (rc == 0 && pending == NULL))
            goto fail;
        if (rc == 0) {  /* hand the rest back: the caller waits for room */
            i++;
            break;
        }
    }
    PyMem_Free(offs);
    PyMem_Free(w.p);
    PyMem_Free(scratch.p);
    PyObject *res = Py_BuildValue("(nO)", i, pending != NULL ? pending : Py_None);
    Py_XDECREF(pending);
    return res;
fail:
    PyMem_Free(offs);
    PyMem_Free(w.p);
    PyMem_Free(scratch.p);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------
 * Receiving the replication stream (API 6). ReplicationConnection.read_batch's Python loop paid, per
 * message, a get_copy_data call, its memoryview, a slice, a struct unpack and a tuple: a raw drain cost
 * 1.1 µs of client CPU per message in Python and 0.56 µs with this loop (bench.connector, 2026-12-04),
 * the connector's stream thread 1.06 against 0.51 µs per change in read_batch. receive() runs the same
 * loop over libpq directly and returns to Python as soon as libpq has no complete message buffered,
 * so the waiting (select, consume_input) and the error handling stay in replication.py.
 *
 * PGconn is opaque and another libpq build may lay it out differently, so this extension is not
 * linked against any libpq: replication.py finds the libpq psycopg itself loaded and hands its
 * PQgetCopyData and PQfreemem addresses to set_libpq once.
 *
 *   set_libpq(get_copy_data_addr, freemem_addr)
 *   receive(pgconn_ptr, out, max_items, received_lsn) -> (status, received_lsn, reply_requested)
 *       appends read_batch's items to out — (data start, payload bytes) per XLogData, (WAL end, None)
 *       per keepalive — until out holds max_items (status 1) or PQgetCopyData returns 0 (nothing
 *       complete buffered), -1 (the COPY ended) or -2 (the connection failed): that value is the status.
 */
typedef int (*get_copy_data_fn)(void *conn, char **buffer, int async);
typedef void (*freemem_fn)(void *ptr);
static get_copy_data_fn g_get_copy_data = NULL;
static freemem_fn g_freemem = NULL;

static inline uint64_t be64(const unsigned char *p) {
    return ((uint64_t)be32(p) << 32) | (uint64_t)be32(p + 4);
}

static PyObject *set_libpq(PyObject *self, PyObject *args) {
    unsigned long long get_copy_data, freemem;
    if (!PyArg_ParseTuple(args, "KK", &get_copy_data, &freemem))
        return NULL;
    if (get_copy_data == 0 || freemem == 0) {
        PyErr_SetString(PyExc_ValueError, "set_libpq needs both function addresses");
        return NULL;
    }
    g_get_copy_data = (get_copy_data_fn)(uintptr_t)get_copy_data;
    g_freemem = (freemem_fn)(uintptr_t)freemem;
    Py_RETURN_NONE;
}

/* (lsn, payload) with the references stolen; NULL (error set) when either is NULL. */
static PyObject *pair(PyObject *lsn, PyObject *payload) {
    PyObject *t = (lsn != NULL && payload != NULL) ? PyTuple_New(2) : NULL;
    if (t == NULL) {
        Py_XDECREF(lsn);
        Py_XDECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, lsn);
    PyTuple_SET_ITEM(t, 1, payload);
    return t;
}

static PyObject *receive(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "receive(pgconn_ptr, out, max_items, received_lsn)");
        return NULL;
    }
    if (g_get_copy_data == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "receive before set_libpq");
        return NULL;
    }
    void *conn = PyLong_AsVoidPtr(args[0]);
    if (conn == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "receive on a closed connection (no PGconn)");
        return NULL;
    }
    PyObject *out = args[1];
    if (!PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError, "receive: out must be a list");
        return NULL;
    }
    Py_ssize_t max_items = PyLong_AsSsize_t(args[2]);
    unsigned long long received = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    int status = 1, reply = 0;
    while (PyList_GET_SIZE(out) < max_items) {
        char *buf = NULL;
        int n = g_get_copy_data(conn, &buf, 1);
        if (n <= 0) {
            status = n;  /* libpq hands out a buffer only with a message, so nothing to free */
            break;
        }
        const unsigned char *p = (const unsigned char *)buf;
        const char kind = buf[0];
        PyObject *item = NULL;
        int bad = 0;
        if (kind == 'w') {
            if (n < 25) {
                bad = 1;
            } else {
                uint64_t end = be64(p + 9);
                if (end > received)
                    received = end;
                item = pair(PyLong_FromUnsignedLongLong(be64(p + 1)),
                            PyBytes_FromStringAndSize(buf + 25, (Py_ssize_t)n - 25));
            }
        } else if (kind == 'k') {
            if (n < 18) {
                bad = 1;
            } else {
                uint64_t end = be64(p + 1);
                if (end > received)
                    received = end;
                if (p[17])
                    reply = 1;
                item = pair(PyLong_FromUnsignedLongLong(end), Py_NewRef(Py_None));
            }
        } else {
            g_freemem(buf);  /* a message kind this client does not use: skipped, as in Python */
            continue;
        }
        g_freemem(buf);
        if (bad) {
            PyErr_Format(PyExc_ValueError, "short replication message '%c' (%d bytes)", kind, n);
            return NULL;
        }
        if (item == NULL)
            return NULL;
        int rc = PyList_Append(out, item);
        Py_DECREF(item);
        if (rc < 0)
            return NULL;
    }
    return Py_BuildValue("(iKO)", status, received, reply ? Py_True : Py_False);
}

/* ---------------------------------------------------------------------------------------------------
 * Receiving a snapshot chunk's COPY OUT (API 7). PostgreSQL sends one CopyData per row, so the Python
 * loop of snapshot._copy_rows paid a psycopg get_copy_data call, a memoryview, a bytes copy and a list
 * append per row, holding the GIL the whole time, waits included. copy_out() runs that loop over the
 * same libpq functions set_libpq received (see receive above): PQgetCopyData(conn, &buf, 0) blocks
 * until a row, the end of the COPY (-1) or a failure (-2), and each row is appended to one buffer. The
 * GIL is released for the whole loop, waits included: the buffer is PyMem_Raw memory, which needs no
 * GIL, and the thread takes the GIL back once per chunk rather than once per row (a GIL handed back and
 * forth per row would let any busy Python thread stall the read for its switch interval).
 *
 *   copy_out(pgconn_ptr) -> (status, data)
 *       data: every row received, joined (b"" for none); status: what ended the loop, -1 (the COPY
 *       ended: the caller reads the result with get_result, as before) or -2 (libpq failed: the
 *       caller raises what psycopg's get_copy_data raises). Nothing else is done with the connection.
 */
static PyObject *copy_out(PyObject *self, PyObject *arg) {
    if (g_get_copy_data == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "copy_out before set_libpq");
        return NULL;
    }
    void *conn = PyLong_AsVoidPtr(arg);
    if (conn == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "copy_out on a closed connection (no PGconn)");
        return NULL;
    }
    get_copy_data_fn get_copy_data = g_get_copy_data;  /* as set now, whatever set_libpq does meanwhile */
    freemem_fn freemem = g_freemem;
    char *acc = NULL;
    size_t used = 0, cap = 0;
    int status, no_memory = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        char *buf = NULL;
        int n = get_copy_data(conn, &buf, 0);
        if (n <= 0) {
            status = n;  /* libpq hands out a buffer only with a row, so nothing to free */
            break;
        }
        if (used + (size_t)n > cap) {
            size_t want = cap ? cap * 2 : 65536;
            while (want < used + (size_t)n)
                want *= 2;
            char *grown = PyMem_RawRealloc(acc, want);
            if (grown == NULL) {
                freemem(buf);
                no_memory = 1;  /* MemoryError, the rest of the COPY unread (as the Python loop would) */
                status = -2;
                break;
            }
            acc = grown;
            cap = want;
        }
        memcpy(acc + used, buf, (size_t)n);
        used += (size_t)n;
        freemem(buf);
    }
    Py_END_ALLOW_THREADS
    if (no_memory || used > (size_t)PY_SSIZE_T_MAX) {
        PyMem_RawFree(acc);
        return PyErr_NoMemory();
    }
    PyObject *data = PyBytes_FromStringAndSize(acc, (Py_ssize_t)used);
    PyMem_RawFree(acc);
    if (data == NULL)
        return NULL;
    return Py_BuildValue("(iN)", status, data);
}

static PyObject *set_dumps(PyObject *self, PyObject *fn) {
    Py_XSETREF(g_dumps, Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *to_bool, *to_date, *to_zts;
    Py_ssize_t memo_size;
    if (!PyArg_ParseTuple(args, "OOOn", &to_bool, &to_date, &to_zts, &memo_size))
        return NULL;
    Py_XSETREF(g_to_bool, Py_NewRef(to_bool));
    Py_XSETREF(g_to_date, Py_NewRef(to_date));
    Py_XSETREF(g_to_zts, Py_NewRef(to_zts));
    g_memo_size = memo_size;
    Py_RETURN_NONE;
}

static PyObject *set_unchanged(PyObject *self, PyObject *marker) {
    Py_XSETREF(g_unchanged, Py_NewRef(marker));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(to_bool, to_date_days, to_zoned_timestamp, memo_size)"},
    {"set_unchanged", set_unchanged, METH_O, "set_unchanged(marker): the object tuple_values returns for 'u'"},
    {"fast_row", (PyCFunction)(void (*)(void))fast_row, METH_FASTCALL,
     "fast_row(buf, pos, fields) -> (dict, pos) | None: pgoutput TupleData into column name -> JSON value"},
    {"tuple_values", (PyCFunction)(void (*)(void))tuple_values, METH_FASTCALL,
     "tuple_values(buf, pos) -> (list, pos) | None: pgoutput TupleData into text values"},
    {"read_row", (PyCFunction)(void (*)(void))read_row, METH_FASTCALL,
     "read_row(values, fields) -> dict | None: a snapshot row's text values into column name -> JSON value"},
    {"split_copy", split_copy, METH_O,
     "split_copy(data) -> list[list[str]] | None: COPY text rows without escapes, split on newlines and tabs"},
    {"set_dumps", set_dumps, METH_O, "set_dumps(orjson.dumps): what serialises values the writer does not know"},
    {"change_event", (PyCFunction)(void (*)(void))change_event, METH_FASTCALL,
     "change_event(buf, ctx, lsn, total_order, data_collection_order, tail) -> (op, key, value) | None"},
    {"change_batch", (PyCFunction)(void (*)(void))change_batch, METH_FASTCALL,
     "change_batch(items, start, rels, tx, tail, produce, tombstones) -> (next, n_c, n_u, n_d, pending)"},
    {"read_event", (PyCFunction)(void (*)(void))read_event, METH_FASTCALL,
     "read_event(values, fields, names, key_idx, head, tail) -> (key, value) | None: a snapshot row's record"},
    {"copy_lines", copy_lines, METH_O, "copy_lines(data) -> list[int] | None: where each COPY text line starts"},
    {"copy_batch", (PyCFunction)(void (*)(void))copy_batch, METH_FASTCALL,
     "copy_batch(data, starts, start, stop, fields, names, key_idx, head, tail, produce, topic) -> (next, pending)"},
    {"set_libpq", set_libpq, METH_VARARGS,
     "set_libpq(get_copy_data_addr, freemem_addr): the loaded libpq's PQgetCopyData and PQfreemem"},
    {"receive", (PyCFunction)(void (*)(void))receive, METH_FASTCALL,
     "receive(pgconn_ptr, out, max_items, received_lsn) -> (status, received_lsn, reply_requested)"},
    {"copy_out", copy_out, METH_O,
     "copy_out(pgconn_ptr) -> (status, data): a COPY OUT's rows joined, read with the GIL released"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pgtuple", "pgoutput tuple and COPY row loops in C (see connectors/postgres/decoder.py)",
    -1, methods, NULL, NULL, NULL, NULL,
};

/* Bumped whenever a signature changes: decoder.py refuses a stale build (and uses Python) instead of failing. */
#define PGTUPLE_API 8

PyMODINIT_FUNC PyInit__pgtuple(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", PGTUPLE_API) < 0)
        Py_CLEAR(m);
    return m;
}
