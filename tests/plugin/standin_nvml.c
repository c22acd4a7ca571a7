/*
 * A stand-in libnvidia-ml.so.1 for the k80s tests: K80 boards (two dies each) without a GPU.
 *
 * Written for k80s from the NVML function signatures; only the calls the k80s plugin makes are
 * implemented. Like the R470 driver it does NOT export calls added later (nvmlDeviceGetMemoryInfo_v2,
 * nvmlDeviceGetComputeRunningProcesses_v3, nvmlEventSetWait_v3, nvmlDeviceGetPciInfoExt), so
 * nvidia-ml-py's lazy symbol lookup raises NVMLError_FunctionNotFound for them. Built with
 * -DSTANDIN_STRIPPED it also lacks nvmlDeviceGetBoardId, nvmlDeviceGetMinorNumber,
 * nvmlDeviceGetCudaComputeCapability and nvmlEventSetWait_v2 (a pre-R450 style library), to
 * exercise the plugin's fallbacks.
 *
 * Control: the file named by $K80S_STANDIN_NVML is read on every call, one directive a line:
 *   dies N               number of dies (default 4 = 2 boards)
 *   driver TEXT          driver version (default 470.256.02)
 *   used I MIB           die I reports MIB used (default 7)
 *   fail CODE            every call returns CODE (e.g. 9 = driver not loaded)
 *   queryfail I CODE     calls on die I return CODE (e.g. 15 = GPU is lost)
 *   noevents 1           nvmlDeviceRegisterEvents returns NOT_SUPPORTED
 *   xid I N              an XID N event on die I (-1: an event without a device); each line is
 *                        delivered once, in order, by nvmlEventSetWait_v2
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999

#define MAX_DIES 32
#define MAX_XIDS 256
#define MIB (1024ULL * 1024ULL)
#define TOTAL_MIB 11441ULL

struct die { int index; };
typedef struct die *nvmlDevice_t;
typedef struct event_set { int unused; } *nvmlEventSet_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

#define XID_CRITICAL 0x8ULL
#define DOUBLE_BIT_ECC 0x2ULL

struct control {
    int dies;
    char driver[80];
    unsigned long long used[MAX_DIES];
    int fail;
    int queryfail[MAX_DIES];
    int noevents;
    int xid_die[MAX_XIDS];
    unsigned long long xid_num[MAX_XIDS];
    int xids;
};

static struct die g_dies[MAX_DIES];
static struct event_set g_set;
static int g_initialised;
#ifndef STANDIN_STRIPPED
static int g_delivered; /* xid lines already delivered */
#endif

static void read_control(struct control *c) {
    memset(c, 0, sizeof *c);
    c->dies = 4;
    strcpy(c->driver, "470.256.02");
    for (int i = 0; i < MAX_DIES; i++) c->used[i] = 7;
    const char *path = getenv("K80S_STANDIN_NVML");
    if (!path) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[256], word[32];
    while (fgets(line, sizeof line, f)) {
        int a = 0; long long b = 0; char text[80];
        if (sscanf(line, "%31s", word) != 1) continue;
        if (!strcmp(word, "dies") && sscanf(line, "%*s %d", &a) == 1 && a >= 0 && a <= MAX_DIES) c->dies = a;
        else if (!strcmp(word, "driver") && sscanf(line, "%*s %79s", text) == 1) strcpy(c->driver, text);
        else if (!strcmp(word, "used") && sscanf(line, "%*s %d %lld", &a, &b) == 2 && a >= 0 && a < MAX_DIES) c->used[a] = (unsigned long long)b;
        else if (!strcmp(word, "fail") && sscanf(line, "%*s %d", &a) == 1) c->fail = a;
        else if (!strcmp(word, "queryfail") && sscanf(line, "%*s %d %lld", &a, &b) == 2 && a >= 0 && a < MAX_DIES) c->queryfail[a] = (int)b;
        else if (!strcmp(word, "noevents") && sscanf(line, "%*s %d", &a) == 1) c->noevents = a;
        else if (!strcmp(word, "xid") && sscanf(line, "%*s %d %lld", &a, &b) == 2 && c->xids < MAX_XIDS) {
            c->xid_die[c->xids] = a;
            c->xid_num[c->xids] = (unsigned long long)b;
            c->xids++;
        }
    }
    fclose(f);
}

/* Checks shared by every per-die call: library state, injected failures, a valid handle. */
static nvmlReturn_t check_die(nvmlDevice_t d, struct control *c) {
    read_control(c);
    if (c->fail) return c->fail;
    if (!g_initialised) return NVML_ERROR_UNINITIALIZED;
    if (!d || d < g_dies || d >= g_dies + c->dies) return NVML_ERROR_INVALID_ARGUMENT;
    if (c->queryfail[d->index]) return c->queryfail[d->index];
    return NVML_SUCCESS;
}

static nvmlReturn_t put(char *dst, unsigned int size, const char *text) {
    if (strlen(text) + 1 > size) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dst, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    struct control c;
    read_control(&c);
    if (c.fail) return c.fail;
    for (int i = 0; i < MAX_DIES; i++) g_dies[i].index = i;
    g_initialised = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    g_initialised = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case 9: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    struct control c;
    read_control(&c);
    if (c.fail) return c.fail;
    return put(version, length, c.driver);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    *v = 11040;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    struct control c;
    read_control(&c);
    if (c.fail) return c.fail;
    if (!g_initialised) return NVML_ERROR_UNINITIALIZED;
    *count = (unsigned int)c.dies;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    struct control c;
    read_control(&c);
    if (c.fail) return c.fail;
    if (!g_initialised) return NVML_ERROR_UNINITIALIZED;
    if (index >= (unsigned int)c.dies) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_dies[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    char text[80];
    snprintf(text, sizeof text, "GPU-57a4d1e0-0000-4000-8000-%012x", 0xa80000 + d->index);
    return put(uuid, length, text);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    *index = (unsigned int)d->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    return put(name, length, "Tesla K80");
}

nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t d, char *serial, unsigned int length) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    char text[32];
    snprintf(text, sizeof text, "03240161029%02d", d->index / 2); /* both dies: one board serial */
    return put(serial, length, text);
}

nvmlReturn_t nvmlDeviceGetMultiGpuBoard(nvmlDevice_t d, unsigned int *multi) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    *multi = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    memset(pci, 0, sizeof *pci);
    pci->bus = 4 + (unsigned int)d->index;
    pci->pciDeviceId = 0x102d10de; /* GK210GL [Tesla K80] */
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", pci->bus);
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", pci->bus);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *mem) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    unsigned long long used = c.used[d->index];
    if (used > TOTAL_MIB) used = TOTAL_MIB;
    mem->total = TOTAL_MIB * MIB;
    mem->used = used * MIB;
    mem->free = (TOTAL_MIB - used) * MIB;
    return NVML_SUCCESS;
}

#ifndef STANDIN_STRIPPED
nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    *minor = (unsigned int)d->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetBoardId(nvmlDevice_t d, unsigned int *board) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    *board = 0x4100u + (unsigned int)(d->index / 2);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    *major = 3;
    *minor = 7;
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    struct control c;
    read_control(&c);
    if (c.fail) return c.fail;
    *set = &g_set;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    (void)set;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t d, unsigned long long *types) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    *types = c.noevents ? 0ULL : (XID_CRITICAL | DOUBLE_BIT_ECC | 0x1ULL);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types, nvmlEventSet_t set) {
    struct control c;
    nvmlReturn_t r = check_die(d, &c);
    if (r) return r;
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    if (c.noevents || !(types & XID_CRITICAL)) return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

#ifndef STANDIN_STRIPPED
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec step = {0, 10 * 1000 * 1000}; /* the control file is checked every 10 ms */
    for (unsigned int waited = 0;; waited += 10) {
        struct control c;
        read_control(&c);
        if (c.fail) return c.fail;
        if (!g_initialised) return NVML_ERROR_UNINITIALIZED;
        if (g_delivered < c.xids) {
            int die = c.xid_die[g_delivered];
            memset(data, 0, sizeof *data);
            data->device = (die >= 0 && die < c.dies) ? &g_dies[die] : NULL;
            data->eventType = XID_CRITICAL;
            data->eventData = c.xid_num[g_delivered];
            g_delivered++;
            return NVML_SUCCESS;
        }
        if (waited >= timeoutms) return NVML_ERROR_TIMEOUT;
        nanosleep(&step, NULL);
    }
}
#endif
