/* pcapd._recorder: the flight recorder's trigger filter, run over a batch of EPBs in one call.
 *
 * match_epbs(program, blocks) -> list of the timestamps (ns) of the packets that match.
 * `program` is a buffer of struct bpf_insn in native byte order (pcapd.agent.bpf.program_bytes,
 * compiled by the limited child of pcapd.agent.bpf_worker); it is checked with libpcap's
 * bpf_validate (jumps inside the program, a return at the end, scratch memory in range) before
 * it runs, first by pcapd's own rules (check_program below), then by libpcap's bpf_validate.
 * `blocks` are little-endian EPBs of interface 0 as the capture engine writes them; every block
 * is bounds-checked (type, length a multiple of 4, at most MAX_EPB and inside the buffer,
 * captured length inside the block, interface 0) and a bad one raises ValueError: nothing is
 * read outside the buffer. libpcap's
 * interpreter (bpf_filter) checks every packet load against the captured length itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pcap/pcap.h>
#include <stdint.h>
#include <string.h>

#define PCAPD_BPF_MAXINSNS 4096
#define PCAPD_BPF_MEMWORDS 16
#define EPB_TYPE 0x00000006u
#define MAX_EPB (32u + 262144u)  /* pcapd.agent.ring.MAX_EPB: the longest EPB a capture writes */

/* pcapd's own rules for a program, before libpcap's bpf_validate, and the same as
 * pcapd.agent.matcher.check_program (the twin the pure path runs): only the opcodes libpcap's
 * interpreter implements (libpcap 1.10's bpf_validate checks the class and mode only, and
 * bpf_filter abort()s on the rest, e.g. LDX|W|ABS or RET|X); every jump forward and inside the
 * program, summed in 64 bits (1.10 lets "ja -1" through: 1 + 0xffffffff wraps to 0, and the
 * interpreter then loops for ever); scratch memory in range; no constant division, modulo or
 * shift libpcap's newer validator refuses; no load of a scratch memory slot that some path to it
 * did not store first (1.10's interpreter leaves the slots uninitialised: such a load reads
 * the stack, and the answer changes from call to call); a return at the end. Forward jumps
 * only, so one pass in order knows, at each instruction, the slots stored on every path to it.
 * Returns the index of the first bad instruction, count for a program without a final return,
 * or -1. */
static Py_ssize_t check_program(const struct bpf_insn *insns, Py_ssize_t count) {
    uint16_t stored[PCAPD_BPF_MAXINSNS];  /* slots stored on every path to each instruction */
    for (Py_ssize_t i = 0; i < count; i++) stored[i] = i ? 0xffff : 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const struct bpf_insn *p = &insns[i];
        uint64_t from = (uint64_t)i + 1;
        int ok;
        switch (p->code) {
        case 0x06: case 0x16:                                   /* RET K, A */
        case 0x20: case 0x28: case 0x30:                        /* LD W, H, B ABS */
        case 0x40: case 0x48: case 0x50:                        /* LD W, H, B IND */
        case 0x80: case 0x81: case 0xb1: case 0x00: case 0x01:  /* LD(X) LEN, MSH, IMM */
        case 0x04: case 0x0c: case 0x14: case 0x1c: case 0x24:  /* ALU ADD, SUB, MUL */
        case 0x2c: case 0x3c: case 0x9c:                        /* ALU MUL X, DIV X, MOD X */
        case 0x44: case 0x4c: case 0x54: case 0x5c:             /* ALU OR, AND */
        case 0xa4: case 0xac: case 0x6c: case 0x7c: case 0x84:  /* XOR, LSH X, RSH X, NEG */
        case 0x07: case 0x87:                                   /* MISC TAX, TXA */
            ok = 1;
            break;
        case 0x60: case 0x61: case 0x02: case 0x03:             /* LD(X) MEM, ST, STX */
            ok = p->k < PCAPD_BPF_MEMWORDS;
            break;
        case 0x34: case 0x94:                                   /* ALU DIV K, MOD K */
            ok = p->k != 0;
            break;
        case 0x64: case 0x74:                                   /* ALU LSH K, RSH K */
            ok = p->k < 32;
            break;
        case 0x05:                                              /* JA */
            ok = from + p->k < (uint64_t)count;
            break;
        case 0x15: case 0x25: case 0x35: case 0x45:             /* JEQ, JGT, JGE, JSET K */
        case 0x1d: case 0x2d: case 0x3d: case 0x4d:             /* the same, X */
            ok = from + p->jt < (uint64_t)count && from + p->jf < (uint64_t)count;
            break;
        default:
            ok = 0;
        }
        if (!ok) return i;
        uint16_t have = stored[i];
        if ((p->code == 0x60 || p->code == 0x61) && !(have & (1u << p->k))) return i;
        if (p->code == 0x02 || p->code == 0x03) have |= (uint16_t)(1u << p->k);
        if ((p->code & 0x07) == 0x06) continue;                 /* RET: no successor */
        if (p->code == 0x05) {
            stored[from + p->k] &= have;
        } else if ((p->code & 0x07) == 0x05) {
            stored[from + p->jt] &= have;
            stored[from + p->jf] &= have;
        } else if (i + 1 < count) {
            stored[i + 1] &= have;
        }
    }
    return count > 0 && (insns[count - 1].code & 0x07) == 0x06 ? -1 : count;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static PyObject *match_epbs(PyObject *module, PyObject *args) {
    Py_buffer prog, buf;
    if (!PyArg_ParseTuple(args, "y*y*", &prog, &buf)) return NULL;
    PyObject *result = NULL;
    struct bpf_insn *insns = NULL;
    Py_ssize_t count = prog.len / (Py_ssize_t)sizeof(struct bpf_insn);
    if (prog.len <= 0 || prog.len % (Py_ssize_t)sizeof(struct bpf_insn) != 0
            || count > PCAPD_BPF_MAXINSNS) {
        PyErr_SetString(PyExc_ValueError,
                        "a BPF program is 1 to 4096 instructions of 8 bytes each");
        goto done;
    }
    insns = PyMem_Malloc((size_t)prog.len);  /* aligned, unlike the buffer */
    if (insns == NULL) { PyErr_NoMemory(); goto done; }
    memcpy(insns, prog.buf, (size_t)prog.len);
    Py_ssize_t bad = check_program(insns, count);
    if (bad == count) {
        PyErr_SetString(PyExc_ValueError, "the BPF program does not end with a return");
        goto done;
    }
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "not a valid BPF program (instruction %zd)", bad);
        goto done;
    }
    if (!bpf_validate(insns, (int)count)) {
        PyErr_SetString(PyExc_ValueError, "not a valid BPF program (bpf_validate refused it)");
        goto done;
    }
    result = PyList_New(0);
    if (result == NULL) goto done;
    const unsigned char *p = buf.buf;
    Py_ssize_t pos = 0, len = buf.len;
    while (pos < len) {
        if (len - pos < 32) goto bad;
        uint32_t type = le32(p + pos), total = le32(p + pos + 4);
        uint32_t caplen = le32(p + pos + 20), wirelen = le32(p + pos + 24);
        if (type != EPB_TYPE || total < 32 || total % 4 || total > MAX_EPB
                || (Py_ssize_t)total > len - pos || caplen > total - 32
                || le32(p + pos + 8) != 0 || le32(p + pos + total - 4) != total)
            goto bad;
        if (bpf_filter(insns, p + pos + 28, wirelen < caplen ? caplen : wirelen, caplen)) {
            unsigned long long ts = (unsigned long long)le32(p + pos + 12) << 32
                                    | le32(p + pos + 16);
            PyObject *stamp = PyLong_FromUnsignedLongLong(ts);
            if (stamp == NULL || PyList_Append(result, stamp) < 0) {
                Py_XDECREF(stamp);
                Py_CLEAR(result);
                goto done;
            }
            Py_DECREF(stamp);
        }
        pos += total;
    }
    goto done;
bad:
    Py_CLEAR(result);
    PyErr_Format(PyExc_ValueError, "not a whole little-endian EPB at byte %zd", pos);
done:
    PyMem_Free(insns);
    PyBuffer_Release(&prog);
    PyBuffer_Release(&buf);
    return result;
}

/* epb_index(blocks) -> (timestamps, ends, in_order): two bytes objects of native uint64, one
 * entry per EPB: its timestamp (ns) and the offset just past it; whether the timestamps never
 * go back. Raises ValueError at the first block
 * that is not a whole little-endian EPB of interface 0. The ring's index, without a Python
 * object per packet. */
static PyObject *epb_index(PyObject *module, PyObject *arg) {
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) != 0) return NULL;
    const unsigned char *p = buf.buf;
    Py_ssize_t pos = 0, len = buf.len, n = 0;
    Py_ssize_t most = len / 32;
    int in_order = 1;
    PyObject *stamps = PyBytes_FromStringAndSize(NULL, most * 8);
    PyObject *ends = PyBytes_FromStringAndSize(NULL, most * 8);
    if (stamps == NULL || ends == NULL) goto fail;
    uint64_t *ts = (uint64_t *)PyBytes_AS_STRING(stamps);
    uint64_t *end = (uint64_t *)PyBytes_AS_STRING(ends);
    while (pos < len) {
        if (len - pos < 32) goto bad;
        uint32_t total = le32(p + pos + 4), caplen = le32(p + pos + 20);
        if (le32(p + pos) != EPB_TYPE || total < 32 || total % 4 || total > MAX_EPB
                || (Py_ssize_t)total > len - pos
                || caplen > total - 32 || le32(p + pos + 8) != 0
                || le32(p + pos + total - 4) != total)
            goto bad;
        ts[n] = (uint64_t)le32(p + pos + 12) << 32 | le32(p + pos + 16);
        if (n && ts[n] < ts[n - 1]) in_order = 0;
        pos += total;
        end[n++] = (uint64_t)pos;
    }
    PyBuffer_Release(&buf);
    if (_PyBytes_Resize(&stamps, n * 8) < 0) { Py_DECREF(ends); return NULL; }
    if (_PyBytes_Resize(&ends, n * 8) < 0) { Py_DECREF(stamps); return NULL; }
    return Py_BuildValue("(NNO)", stamps, ends, in_order ? Py_True : Py_False);
bad:
    PyErr_Format(PyExc_ValueError, "not whole EPBs of interface 0 (at byte %zd of %zd)", pos,
                 len);
fail:
    Py_XDECREF(stamps);
    Py_XDECREF(ends);
    PyBuffer_Release(&buf);
    return NULL;
}

static PyMethodDef methods[] = {
    {"epb_index", epb_index, METH_O,
     "epb_index(blocks) -> (timestamps, ends, in_order): uint64 arrays as bytes"},
    {"match_epbs", match_epbs, METH_VARARGS,
     "match_epbs(program, blocks) -> timestamps of the EPBs the BPF program accepts"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_recorder", "The flight recorder's trigger filter.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__recorder(void) { return PyModule_Create(&module); }
