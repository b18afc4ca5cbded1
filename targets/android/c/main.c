/*
 * tinykd-demo: runs an ONNX model through the tinykd C API.
 *
 *   tinykd-demo MODEL.onnx INPUT
 *
 * INPUT is a .npy file (little-endian float32, C order; only its data is
 * read, the shape is taken from the model) or a raw file of little-endian
 * float32 values. Prints the outputs, one per line, and their argmax.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinykd.h"

/* Reads a whole file into a buffer aligned to TINYKD_MODEL_ALIGN (the model
 * bytes must be). Returns NULL on error, with the reason printed. */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    unsigned char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "%s: cannot tell its size\n", path);
        goto out;
    }
    /* aligned_alloc wants a size that is a multiple of the alignment. */
    size_t cap = ((size_t)size + TINYKD_MODEL_ALIGN) / TINYKD_MODEL_ALIGN * TINYKD_MODEL_ALIGN;
    buf = aligned_alloc(TINYKD_MODEL_ALIGN, cap);
    if (!buf) {
        fprintf(stderr, "%s: out of memory\n", path);
        goto out;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "%s: read error\n", path);
        free(buf);
        buf = NULL;
        goto out;
    }
    *len = (size_t)size;
out:
    fclose(f);
    return buf;
}

/* Where the float32 data starts in `bytes`: after the header of a .npy file
 * (checked to be little-endian float32, C order), or at 0 for a raw file.
 * Returns (size_t)-1 on error, with the reason printed. */
static size_t data_offset(const char *path, const unsigned char *bytes, size_t len) {
    if (len < 10 || memcmp(bytes, "\x93NUMPY", 6) != 0) return 0; /* raw floats */
    size_t header_len, start;
    if (bytes[6] == 1) {
        header_len = bytes[8] | (size_t)bytes[9] << 8;
        start = 10;
    } else if ((bytes[6] == 2 || bytes[6] == 3) && len >= 12) {
        header_len = bytes[8] | (size_t)bytes[9] << 8 | (size_t)bytes[10] << 16 |
                     (size_t)bytes[11] << 24;
        start = 12;
    } else {
        fprintf(stderr, "%s: unsupported .npy version %d\n", path, bytes[6]);
        return (size_t)-1;
    }
    if (start + header_len > len) {
        fprintf(stderr, "%s: truncated .npy header\n", path);
        return (size_t)-1;
    }
    /* The header is a Python dict literal; numpy writes these two keys so. */
    char header[512] = {0};
    memcpy(header, bytes + start, header_len < sizeof header - 1 ? header_len : sizeof header - 1);
    if (!strstr(header, "'descr': '<f4'") || !strstr(header, "'fortran_order': False")) {
        fprintf(stderr, "%s: not a little-endian float32 C-order array: %s\n", path, header);
        return (size_t)-1;
    }
    return start + header_len;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.onnx INPUT.npy|INPUT.f32\n", argv[0]);
        return 2;
    }
    int status = 1;
    size_t model_len = 0, input_bytes = 0;
    unsigned char *model = read_file(argv[1], &model_len);
    unsigned char *raw = read_file(argv[2], &input_bytes);
    float *input = NULL, *output = NULL;
    unsigned char *arena = NULL;
    if (!model || !raw) goto out;

    size_t input_len, output_len, arena_len;
    int32_t rc = tinykd_io_lens(model, model_len, &input_len, &output_len);
    if (rc == TINYKD_OK) rc = tinykd_arena_size(model, model_len, &arena_len);
    if (rc != TINYKD_OK) {
        fprintf(stderr, "%s: %s (%d)\n", argv[1], tinykd_strerror(rc), rc);
        goto out;
    }
    size_t offset = data_offset(argv[2], raw, input_bytes);
    if (offset == (size_t)-1) goto out;
    if (input_bytes - offset != input_len * sizeof(float)) {
        fprintf(stderr, "%s: %zu data bytes, but the model's input holds %zu floats\n", argv[2],
                input_bytes - offset, input_len);
        goto out;
    }
    /* The .npy data may start at any offset: copy it into a float array. */
    input = malloc(input_len * sizeof(float) + 1);
    output = malloc(output_len * sizeof(float) + 1);
    arena = malloc(arena_len + 1);
    if (!input || !output || !arena) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    memcpy(input, raw + offset, input_len * sizeof(float));
    printf("model: %zu bytes, input %zu floats, output %zu floats, arena %zu bytes\n", model_len,
           input_len, output_len, arena_len);

    rc = tinykd_run(model, model_len, arena, arena_len, input, input_len, output, output_len);
    if (rc != TINYKD_OK) {
        fprintf(stderr, "tinykd_run: %s (%d)\n", tinykd_strerror(rc), rc);
        goto out;
    }
    size_t best = 0;
    for (size_t i = 0; i < output_len; i++) {
        printf("logit[%zu] = %.9g\n", i, output[i]);
        if (output[i] > output[best]) best = i; /* first maximum, as numpy's argmax */
    }
    printf("argmax = %zu\n", best);
    status = 0;
out:
    free(arena);
    free(output);
    free(input);
    free(raw);
    free(model);
    return status;
}
