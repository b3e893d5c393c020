/* A qemu TCG plugin that counts the guest instructions each guest thread executes.
 *
 * Every translated block adds its instruction count when it starts to run. Threads are counted
 * apart because only a single-threaded guest counts the same work the same way twice: threads
 * that spin or wake each other add a number that depends on the host's scheduling.
 * Argument: out=PATH, the JSON file written at exit: {"threads": [main, second, ...],
 * "peak_rss_kb": N}, the last being the qemu process's VmHWM (the guest's memory and qemu's own).
 * Built by edgeemb.bench.instructions against qemu's public plugin header (plugin API version 1+). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_THREADS 1024
static uint64_t executed[MAX_THREADS];
static unsigned threads;
static char out[4096];

static void on_block(unsigned int vcpu, void *instructions)
{
    __atomic_fetch_add(&executed[vcpu % MAX_THREADS], (uint64_t)(uintptr_t)instructions, __ATOMIC_RELAXED);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}

static void on_thread(qemu_plugin_id_t id, unsigned int vcpu)
{
    __atomic_fetch_add(&threads, 1, __ATOMIC_RELAXED);
}

static unsigned long peak_rss_kb(void)
{
    char line[256];
    unsigned long kb = 0;
    FILE *status = fopen("/proc/self/status", "r");
    if (!status)
        return 0;
    while (fgets(line, sizeof(line), status))
        if (sscanf(line, "VmHWM: %lu kB", &kb) == 1)
            break;
    fclose(status);
    return kb;
}

static void on_exit(qemu_plugin_id_t id, void *unused)
{
    FILE *file = fopen(out, "w");
    if (!file)
        return;
    fprintf(file, "{\"threads\": [");
    for (unsigned i = 0; i < threads && i < MAX_THREADS; i++)
        fprintf(file, "%s%" PRIu64, i ? ", " : "", executed[i]);
    fprintf(file, "], \"peak_rss_kb\": %lu}\n", peak_rss_kb());
    fclose(file);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    if (argc != 1 || strncmp(argv[0], "out=", 4) != 0 || strlen(argv[0] + 4) >= sizeof(out)) {
        fprintf(stderr, "insn_count: expects one argument, out=PATH\n");
        return -1;
    }
    strcpy(out, argv[0] + 4);
    qemu_plugin_register_vcpu_init_cb(id, on_thread);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
