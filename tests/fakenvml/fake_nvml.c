/* fake_nvml.c - a stand-in for libnvidia-ml.so.1 for the tests: the NVML
 * entry points src/gpu.c uses, with the same signatures, answering from a
 * script so that GPU code runs on machines without a GPU.
 *
 * The script is the text file named by $IC_FAKE_NVML_FILE, re-read on every
 * call so a test can change a reading while a server runs. One `key value`
 * per line, `#` starts a comment:
 *
 *   count 2                  GPUs (default 0; no file: 0)
 *   fail_init 1              nvmlInit_v2 fails (default 0)
 *   0.name NVIDIA GeForce GTX 1060 3GB
 *   0.temperature 65         degrees C (default 40)
 *   0.utilization 30         percent (default 0)
 *   0.memory_total 3221225472  bytes (default 8 GiB)
 *   0.memory_used 1073741824   bytes (default 0)
 *   0.power 80.5             watts, reported in milliwatts (default 50)
 *
 * A value of `fail` makes that reading return an error (memory_total or
 * memory_used: the whole memory reading). Each nvmlDeviceGetTemperature call
 * adds one to the number in the file $IC_FAKE_NVML_COUNTER, if set, so tests
 * can count reads. Any thread; libc only. Owns nothing but the init count.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* NVML's ABI, as in src/gpu.c. */
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct nvmlMemory_st {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct nvmlUtilization_st {
    unsigned int gpu, memory;
} nvmlUtilization_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEVICES 64

/* A device handle is the address of its slot here. */
static char devices[MAX_DEVICES];
static int init_refs;

/* Finds `key` in the script and copies its value (trimmed) into val.
 * Returns 1 when found, 0 otherwise. */
static int lookup(const char *key, char *val, size_t n)
{
    const char *path = getenv("IC_FAKE_NVML_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f)
        return 0;
    char line[512];
    size_t klen = strlen(key);
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, key, klen) != 0 || (p[klen] != ' ' && p[klen] != '\t'))
            continue;
        p += klen;
        while (*p == ' ' || *p == '\t')
            p++;
        size_t len = strlen(p);
        while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r' || p[len - 1] == ' ' ||
                           p[len - 1] == '\t'))
            len--;
        if (len >= n)
            len = n - 1;
        memcpy(val, p, len);
        val[len] = '\0';
        found = 1; /* the last line for a key wins */
    }
    fclose(f);
    return found;
}

/* A numeric reading of device `dev`: NVML_SUCCESS, or an error for `fail`. */
static nvmlReturn_t number(int dev, const char *what, double dflt, double *out)
{
    char key[64], val[128];
    snprintf(key, sizeof key, "%d.%s", dev, what);
    *out = dflt;
    if (!lookup(key, val, sizeof val))
        return NVML_SUCCESS;
    if (strcmp(val, "fail") == 0)
        return NVML_ERROR_UNKNOWN;
    char *end;
    double v = strtod(val, &end);
    if (end == val)
        return NVML_ERROR_UNKNOWN;
    *out = v;
    return NVML_SUCCESS;
}

static int device_count(void)
{
    char val[64];
    if (!lookup("count", val, sizeof val))
        return 0;
    int n = atoi(val);
    return n < 0 ? 0 : n > MAX_DEVICES ? MAX_DEVICES : n;
}

/* The device index of a handle, or -1 when it is not one of ours. */
static int index_of(nvmlDevice_t dev)
{
    const char *p = (const char *)dev;
    if (p < devices || p >= devices + MAX_DEVICES)
        return -1;
    int i = (int)(p - devices);
    return i < device_count() ? i : -1;
}

static void bump_counter(void)
{
    const char *path = getenv("IC_FAKE_NVML_COUNTER");
    if (!path)
        return;
    long n = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%ld", &n) != 1)
            n = 0;
        fclose(f);
    }
    f = fopen(path, "w");
    if (f) {
        fprintf(f, "%ld\n", n + 1);
        fclose(f);
    }
}

nvmlReturn_t nvmlInit_v2(void)
{
    char val[64];
    if (lookup("fail_init", val, sizeof val) && atoi(val) != 0)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    init_refs++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void)
{
    if (init_refs == 0)
        return NVML_ERROR_UNINITIALIZED;
    init_refs--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t rc)
{
    switch (rc) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (init_refs == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)device_count();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *dev)
{
    if (init_refs == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!dev || index >= (unsigned int)device_count())
        return NVML_ERROR_INVALID_ARGUMENT;
    *dev = (nvmlDevice_t)(void *)&devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int length)
{
    int i = index_of(dev);
    if (init_refs == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (i < 0 || !name)
        return NVML_ERROR_INVALID_ARGUMENT;
    char key[64], val[256];
    snprintf(key, sizeof key, "%d.name", i);
    if (!lookup(key, val, sizeof val))
        snprintf(val, sizeof val, "Fake GPU %d", i);
    if (strcmp(val, "fail") == 0)
        return NVML_ERROR_UNKNOWN;
    if (strlen(val) >= length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(name, val);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t dev, int sensor, unsigned int *temp_c)
{
    bump_counter();
    int i = index_of(dev);
    if (init_refs == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (i < 0 || !temp_c || sensor != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    double v;
    nvmlReturn_t rc = number(i, "temperature", 40, &v);
    if (rc == NVML_SUCCESS)
        *temp_c = (unsigned int)v;
    return rc;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *util)
{
    int i = index_of(dev);
    if (init_refs == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (i < 0 || !util)
        return NVML_ERROR_INVALID_ARGUMENT;
    double v;
    nvmlReturn_t rc = number(i, "utilization", 0, &v);
    if (rc == NVML_SUCCESS)
        *util = (nvmlUtilization_t){.gpu = (unsigned int)v, .memory = 0};
    return rc;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *mem)
{
    int i = index_of(dev);
    if (init_refs == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (i < 0 || !mem)
        return NVML_ERROR_INVALID_ARGUMENT;
    double total, used;
    if (number(i, "memory_total", 8589934592.0, &total) != NVML_SUCCESS ||
        number(i, "memory_used", 0, &used) != NVML_SUCCESS)
        return NVML_ERROR_UNKNOWN;
    mem->total = (unsigned long long)total;
    mem->used = (unsigned long long)used;
    mem->free = mem->total > mem->used ? mem->total - mem->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t dev, unsigned int *power_mw)
{
    int i = index_of(dev);
    if (init_refs == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (i < 0 || !power_mw)
        return NVML_ERROR_INVALID_ARGUMENT;
    double w;
    nvmlReturn_t rc = number(i, "power", 50, &w);
    if (rc == NVML_SUCCESS)
        *power_mw = (unsigned int)(w * 1000.0 + 0.5);
    return rc;
}
