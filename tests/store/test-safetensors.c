/*
 * test-safetensors: the safetensors reader accepts well-formed files (views,
 * shapes, dtypes, metadata; from memory and from a mapped file) and rejects
 * each kind of defective header with its own status and a message.
 * With an argument PATH, it instead checks the file that tests/store/
 * write-with-python.py wrote with the reference Python package.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dmoe.h"
#include "test-util.h"


/* Builds a file image: 8-byte length, header padded with spaces to pad, data. */
static size_t build(uint8_t *buf, size_t cap, const char *header, size_t pad, const void *data,
                    size_t data_len) {
    size_t hl = strlen(header);
    size_t padded = pad ? (hl + pad - 1) / pad * pad : hl;
    size_t total = 8 + padded + data_len;
    if (total > cap) abort();
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, hl);
    memset(buf + 8 + hl, ' ', padded - hl);
    if (data_len) memcpy(buf + 8 + padded, data, data_len);
    return total;
}

static uint8_t image[1 << 16] __attribute__((aligned(64)));

static void expect_status(const char *what, const char *header, size_t pad, size_t data_len,
                          dmoe_status want) {
    static uint8_t data[4096];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 7 + 1);
    size_t n = build(image, sizeof image, header, pad, data, data_len);
    dmoe_safetensors *st = (dmoe_safetensors *)0x1;
    dmoe_status s = dmoe_safetensors_open_memory(image, n, &st);
    TU_CHECKF(s == want, "%s: got %s, want %s (%s)", what, dmoe_status_name(s), dmoe_status_name(want),
          dmoe_context_last_error(NULL));
    if (s == DMOE_OK) dmoe_safetensors_close(st);
    else {
        TU_CHECKF(st == (dmoe_safetensors *)0x1, "%s: output touched on failure", what);
        TU_CHECKF(strlen(dmoe_context_last_error(NULL)) > 20, "%s: no message", what);
    }
}

static void test_good_file(void) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[4] = {0x3f80, 0x4000, 0x4040, 0x4080}; /* bf16 1, 2, 3, 4 */
    uint8_t data[32];
    memcpy(data, a, 24);
    memcpy(data + 24, b, 8);
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[24,32]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";
    size_t n = build(image, sizeof image, h, 8, data, sizeof data);
    dmoe_safetensors *st = NULL;
    dmoe_status s = dmoe_safetensors_open_memory(image, n, &st);
    TU_CHECKF(s == DMOE_OK, "good file rejected: %s", dmoe_context_last_error(NULL));
    if (s != DMOE_OK) return;
    TU_CHECKF(dmoe_safetensors_count(st) == 2, "count %lld", (long long)dmoe_safetensors_count(st));
    dmoe_st_tensor_info info;
    TU_CHECKF(dmoe_safetensors_get(st, 0, &info) == DMOE_OK && strcmp(info.name, "a") == 0,
          "first tensor by offset should be a");
    TU_CHECKF(dmoe_safetensors_find(st, "b", &info) == DMOE_OK, "find b");
    TU_CHECKF(info.dtype == DMOE_DTYPE_BF16 && info.n_dims == 2 && info.shape[0] == 2 &&
              info.shape[1] == 2 && info.n_bytes == 8 && strcmp(info.dtype_name, "BF16") == 0,
          "b info wrong");
    TU_CHECKF(memcmp(info.data, b, 8) == 0, "b data wrong");
    TU_CHECKF(dmoe_safetensors_find(st, "a", &info) == DMOE_OK && ((const float *)info.data)[5] == 6.0f,
          "a data wrong");
    TU_CHECKF(dmoe_safetensors_find(st, "zz", &info) == DMOE_ERR_INVALID_ARGUMENT, "missing name");
    TU_CHECKF(dmoe_safetensors_get(st, 2, &info) == DMOE_ERR_INVALID_ARGUMENT, "index out of range");
    const char *fmt = dmoe_safetensors_metadata(st, "format");
    TU_CHECKF(fmt && strcmp(fmt, "pt") == 0, "metadata");
    TU_CHECKF(dmoe_safetensors_metadata(st, "nope") == NULL, "missing metadata");
    dmoe_safetensors_close(st);

    /* the same image through a real file and mmap */
    char path[] = "/tmp/dmoe-st-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    TU_CHECKF(f != NULL, "temp file");
    if (!f) return;
    fwrite(image, 1, n, f);
    fclose(f);
    s = dmoe_safetensors_open(path, &st);
    TU_CHECKF(s == DMOE_OK, "file open: %s", dmoe_context_last_error(NULL));
    if (s == DMOE_OK) {
        TU_CHECKF(dmoe_safetensors_find(st, "a", &info) == DMOE_OK && ((const float *)info.data)[4] == 5.0f,
              "mapped data wrong");
        dmoe_safetensors_close(st);
    }
    /* truncated file: the header promises more data than there is */
    f = fopen(path, "wb");
    fwrite(image, 1, n - 4, f);
    fclose(f);
    s = dmoe_safetensors_open(path, &st);
    TU_CHECKF(s == DMOE_ERR_CORRUPT_FILE, "truncated file: %s", dmoe_status_name(s));
    TU_CHECKF(strstr(dmoe_context_last_error(NULL), path) != NULL, "message names the path");
    remove(path);
    s = dmoe_safetensors_open(path, &st);
    TU_CHECKF(s == DMOE_ERR_IO, "missing file: %s", dmoe_status_name(s));
    s = dmoe_safetensors_open("/tmp", &st);
    TU_CHECKF(s == DMOE_ERR_IO, "directory: %s", dmoe_status_name(s));
    /* a FIFO is refused at once, not waited on for a writer (the alarm ends a hang) */
    if (mkfifo(path, 0600) == 0) {
        alarm(20);
        s = dmoe_safetensors_open(path, &st);
        alarm(0);
        TU_CHECKF(s == DMOE_ERR_IO, "FIFO: %s", dmoe_status_name(s));
        TU_CHECKF(strstr(dmoe_context_last_error(NULL), "regular file") != NULL, "FIFO message: %s",
                  dmoe_context_last_error(NULL));
        remove(path);
    }
}

static void test_defects(void) {
    const dmoe_status C = DMOE_ERR_CORRUPT_FILE;
    expect_status("empty header object", "{}", 8, 0, DMOE_OK);
    expect_status("not json", "{\"a\":", 8, 0, C);
    expect_status("not an object", "[1,2]", 8, 0, C);
    expect_status("no dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 8, 4, C);
    expect_status("unknown dtype", "{\"a\":{\"dtype\":\"Q9\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, 4,
                  DMOE_ERR_UNSUPPORTED_DTYPE);
    expect_status("negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 8, 4, C);
    expect_status("fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 8, 4, C);
    expect_status("shape x dtype != bytes",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, 4, C);
    expect_status("shape overflow",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 8, 4, C);
    expect_status("offsets reversed", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 8, 4, C);
    expect_status("one offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4]}}", 8, 4, C);
    expect_status("past the end", "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8, 4, C);
    expect_status("overlap",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}", 8, 6, C);
    expect_status("hole",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 8, 6, C);
    expect_status("trailing bytes", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 8, 6, C);
    expect_status("duplicate name",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 8, 4, C);
    expect_status("metadata not strings", "{\"__metadata__\":{\"k\":1}}", 8, 0, C);
    expect_status("junk after the header object (only space padding may follow)",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}GARBAGE!", 8, 2, C);
    expect_status("a second object after the header object", "{}{}", 8, 0, C);
    {   /* a NUL byte inside a name would cut it short ("a\0b" read as "a") */
        const char *hdr = "{\"a?b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}";
        size_t n = build(image, sizeof image, hdr, 8, "xy", 2);
        uint8_t *q = (uint8_t *)memchr(image + 8, '?', n - 8);
        *q = 0;
        dmoe_safetensors *st = (dmoe_safetensors *)0x1;
        TU_CHECKF(dmoe_safetensors_open_memory(image, n, &st) == C && st == (dmoe_safetensors *)0x1,
                  "NUL byte in a tensor name refused");
    }
    expect_status("misaligned f32 (header not padded)",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
                  DMOE_ERR_MISALIGNED);
    /* header length larger than the file / than 100 MB */
    memset(image, 0, 16);
    image[0] = 0xff;
    image[1] = 0xff;
    dmoe_safetensors *st = NULL;
    TU_CHECKF(dmoe_safetensors_open_memory(image, 16, &st) == C, "header past the end");
    image[3] = 0x7f;
    TU_CHECKF(dmoe_safetensors_open_memory(image, 16, &st) == C, "header above 100 MB");
    TU_CHECKF(dmoe_safetensors_open_memory(image, 5, &st) == C, "shorter than 8 bytes");
    TU_CHECKF(dmoe_safetensors_open_memory(NULL, 5, &st) == DMOE_ERR_NULL_POINTER, "NULL buffer");
    TU_CHECKF(dmoe_safetensors_open(NULL, &st) == DMOE_ERR_NULL_POINTER, "NULL path");
}

/* Checks the file written by the reference Python package (see the script). */
static int check_python_file(const char *path) {
    dmoe_safetensors *st = NULL;
    if (dmoe_safetensors_open(path, &st) != DMOE_OK) {
        fprintf(stderr, "FAIL: %s\n", dmoe_context_last_error(NULL));
        return 1;
    }
    dmoe_st_tensor_info info;
    TU_CHECKF(dmoe_safetensors_count(st) == 3, "python file: 3 tensors");
    TU_CHECKF(dmoe_safetensors_find(st, "w.bf16", &info) == DMOE_OK && info.dtype == DMOE_DTYPE_BF16 &&
              info.n_dims == 3 && info.shape[0] == 2 && info.shape[1] == 3 && info.shape[2] == 5,
          "python file: w.bf16 (2,3,5)");
    /* the script stores value i at flat index i (exact in bf16 for i < 256) */
    for (int i = 0; i < 30; i++) {
        uint32_t u = (uint32_t)((const uint16_t *)info.data)[i] << 16;
        float v;
        memcpy(&v, &u, 4);
        TU_CHECKF(v == (float)i, "python file: w.bf16[%d] = %g", i, (double)v);
    }
    TU_CHECKF(dmoe_safetensors_find(st, "x.f32", &info) == DMOE_OK && info.dtype == DMOE_DTYPE_F32 &&
              info.n_dims == 1 && info.shape[0] == 7 && ((const float *)info.data)[6] == 6.5f,
          "python file: x.f32");
    TU_CHECKF(dmoe_safetensors_find(st, "ids.i64", &info) == DMOE_OK && info.dtype == -1 &&
              strcmp(info.dtype_name, "I64") == 0 && ((const int64_t *)info.data)[3] == -3,
          "python file: ids.i64");
    const char *m = dmoe_safetensors_metadata(st, "writer");
    TU_CHECKF(m && strcmp(m, "python-safetensors") == 0, "python file: metadata");
    dmoe_safetensors_close(st);
    return tu_n_failed != 0;
}

int main(int argc, char **argv) {
    if (argc > 1) {
        int rc = check_python_file(argv[1]);
        printf("%s\n", rc ? "FAILED" : "python-written file read correctly");
        return rc;
    }
    test_good_file();
    test_defects();
    printf("%s (%d failures)\n", tu_n_failed ? "FAILED" : "all safetensors checks passed", tu_n_failed);
    return tu_n_failed != 0;
}
