/* pcapd._pcapngwalk: the pcapng walker's hot loops in C (the pure-Python twin is
 * pcapd/pcapng/packets.py; tests/pcapng/test_walk_differential.py feeds both the same bytes).
 *
 * Attack surface: every byte comes from a file or a peer. Every read is bounds-checked against
 * the buffer's length before it happens (blocks are read only once `pos + total <= size` holds,
 * with `total >= 32`), arithmetic on lengths is done in 64 bits so that no sum can wrap, and
 * the buffer is held through the buffer protocol for the whole call (no Python code runs in
 * between that could resize it). Fuzzed under ASan/UBSan: dev/fuzz-walk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define EPB_TYPE 0x00000006u

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

/* Whether the whole block at p (of `total` bytes, total >= 32, all inside the buffer) is a
 * valid EPB of an interface below `interfaces`. */
static inline int epb_ok(const unsigned char *p, uint64_t total, uint64_t interfaces) {
    return le32(p) == EPB_TYPE
        && le32(p + total - 4) == total
        && (uint64_t)le32(p + 20) + 32 <= total
        && (uint64_t)le32(p + 8) < interfaces;
}

static PyObject *u32_list_append(PyObject *list, uint32_t value) {
    PyObject *v = PyLong_FromUnsignedLong(value);
    if (v == NULL) return NULL;
    int rc = PyList_Append(list, v);
    Py_DECREF(v);
    return rc ? NULL : list;
}

/* epb_run(buf, pos, most, max_block_size, interfaces, interface_map or None)
 *   -> (blocks, high, low, interface_ids, end, refused)
 * See pcapd.pcapng.packets.epb_run for the contract. */
static PyObject *epb_run(PyObject *self, PyObject *args) {
    PyObject *bufobj, *map = Py_None;
    Py_ssize_t pos, most;
    unsigned long long limit, interfaces;
    if (!PyArg_ParseTuple(args, "OnnKK|O", &bufobj, &pos, &most, &limit, &interfaces, &map))
        return NULL;
    int writable = PyByteArray_Check(bufobj);
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t *newids = NULL;
    Py_ssize_t nmap = 0;
    PyObject *blocks = NULL, *high = NULL, *low = NULL, *ids = NULL, *result = NULL;
    if (pos < 0 || pos & 3) {
        PyErr_SetString(PyExc_ValueError, "epb_run: pos must be a non-negative multiple of 4");
        goto done;
    }
    if (map != Py_None) {
        PyObject *seq = PySequence_Fast(map, "interface_map must be a sequence");
        if (seq == NULL) goto done;
        nmap = PySequence_Fast_GET_SIZE(seq);
        newids = PyMem_Malloc((size_t)(nmap ? nmap : 1) * sizeof(uint32_t));
        if (newids == NULL) { Py_DECREF(seq); PyErr_NoMemory(); goto done; }
        for (Py_ssize_t i = 0; i < nmap; i++) {
            unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
            if (v == (unsigned long)-1 && PyErr_Occurred()) { Py_DECREF(seq); goto done; }
            if (v > 0xFFFFFFFFul) {
                Py_DECREF(seq);
                PyErr_SetString(PyExc_ValueError, "interface_map holds an id above 2**32-1");
                goto done;
            }
            newids[i] = (uint32_t)v;
        }
        Py_DECREF(seq);
        if ((unsigned long long)nmap < interfaces) {
            PyErr_SetString(PyExc_ValueError, "interface_map is shorter than the interfaces");
            goto done;
        }
    }
    blocks = PyList_New(0); high = PyList_New(0); low = PyList_New(0); ids = PyList_New(0);
    if (!blocks || !high || !low || !ids) goto done;
    unsigned char *base = view.buf;
    uint64_t size = (uint64_t)view.len, at = (uint64_t)pos;
    int refused = 0;
    /* First pass: how far the valid run goes (no Python objects yet, so a refusal to rewrite
     * a read-only buffer happens before anything is changed). */
    uint64_t end = at;
    Py_ssize_t n = 0;
    int rewrite = 0;
    while (n < most) {
        if (end + 8 > (size & ~(uint64_t)3)) break;           /* no length field yet */
        uint64_t total = le32(base + end + 4);
        if (total < 32 || total & 3 || total > limit) { refused = 1; break; }
        if (end + total > size) break;                      /* not all here yet */
        if (!epb_ok(base + end, total, interfaces)) { refused = 1; break; }
        if (newids && newids[le32(base + end + 8)] != le32(base + end + 8)) rewrite = 1;
        end += total;
        n++;
    }
    if (rewrite && !writable) {
        PyErr_SetString(PyExc_TypeError, "rewriting interface ids needs a bytearray");
        goto done;
    }
    for (uint64_t p = at; p < end;) {
        const unsigned char *b = base + p;
        uint64_t total = le32(b + 4);
        uint32_t iid = le32(b + 8);
        if (!u32_list_append(high, le32(b + 12)) || !u32_list_append(low, le32(b + 16))
            || !u32_list_append(ids, iid))
            goto done;
        if (rewrite) put_le32(base + p + 8, newids[iid]);
        PyObject *block = PyBytes_FromStringAndSize((const char *)b, (Py_ssize_t)total);
        if (block == NULL) goto done;
        int rc = PyList_Append(blocks, block);
        Py_DECREF(block);
        if (rc) goto done;
        p += total;
    }
    result = Py_BuildValue("(OOOOKO)", blocks, high, low, ids, (unsigned long long)end,
                           refused ? Py_True : Py_False);
done:
    Py_XDECREF(blocks); Py_XDECREF(high); Py_XDECREF(low); Py_XDECREF(ids);
    PyMem_Free(newids);
    PyBuffer_Release(&view);
    return result;
}

/* check_epbs(buf, interface_id, new_id) -> number of blocks, 0 unless `buf` is nothing but
 * whole, valid EPBs of `interface_id`; new_id >= 0 rewrites each block's id to it (only then,
 * and only once all is checked). See pcapd.pcapng.packets.check_epbs. */
static PyObject *check_epbs(PyObject *self, PyObject *args) {
    PyObject *bufobj;
    unsigned long long interface_id;
    long long new_id;
    if (!PyArg_ParseTuple(args, "OKL", &bufobj, &interface_id, &new_id)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) return NULL;
    unsigned char *base = view.buf;
    uint64_t size = (uint64_t)view.len, at = 0;
    Py_ssize_t n = 0;
    while (at < size) {
        if (at + 32 > size) { n = 0; break; }
        uint64_t total = le32(base + at + 4);
        if (total < 32 || total & 3 || at + total > size
            || !epb_ok(base + at, total, interface_id + 1)
            || le32(base + at + 8) != interface_id) { n = 0; break; }
        at += total;
        n++;
    }
    if (n && new_id >= 0 && (unsigned long long)new_id != interface_id) {
        if (!PyByteArray_Check(bufobj)) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "rewriting interface ids needs a bytearray");
            return NULL;
        }
        for (at = 0; at < size; at += le32(base + at + 4)) put_le32(base + at + 8, (uint32_t)new_id);
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"epb_run", epb_run, METH_VARARGS, "Frame a run of little-endian EPBs (see packets.epb_run)."},
    {"check_epbs", check_epbs, METH_VARARGS, "Count a buffer of valid EPBs of one interface."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pcapngwalk", "The pcapng walker's hot loops in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pcapngwalk(void) { return PyModule_Create(&module); }
