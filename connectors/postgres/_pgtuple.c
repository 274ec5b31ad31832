/*
 * _pgtuple: the connector's per-value loops in C (optional; the pure-Python code is the reference).
 *
 * Why: the stream's hot path spends about three quarters of its Python time walking pgoutput
 * TupleData (unpack a length, slice, decode, convert — ~16 values per change) and pure Python is at
 * its floor there. These functions do the same walk in C and return exactly the objects the Python
 * functions return; whenever anything is unusual they return None so that the caller falls back to
 * the Python path, which then produces the result (or raises the proper error) itself.
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
 *
 * ``fields`` is TableMeta._fields: a tuple of (name, converter or None, memo dict or None). Converters
 * done in C: None (text as is), int (int2/int4/int8/oid text without sign tricks, at most 18 digits),
 * to_bool, to_date_days (plain YYYY-MM-DD) and to_zoned_timestamp (the UTC "…+00" form, precision 6);
 * anything else, or any other text, goes to the Python converter, through its memo if it has one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pgtuple", "pgoutput tuple and COPY row loops in C (see connectors/postgres/decoder.py)",
    -1, methods, NULL, NULL, NULL, NULL,
};

/* Bumped whenever a signature changes: decoder.py refuses a stale build (and uses Python) instead of failing. */
#define PGTUPLE_API 3

PyMODINIT_FUNC PyInit__pgtuple(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", PGTUPLE_API) < 0)
        Py_CLEAR(m);
    return m;
}
