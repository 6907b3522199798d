/* qemu TCG plugin (API version 1, qemu 7.2): guest instructions executed per translation block, written
 * as "address count" lines to the file named by out=PATH at exit. With profile.py it says where an aarch64
 * program spends its instructions, function by function (../shared/tools/arm-icount only totals them).
 * Build: gcc -shared -fPIC -O2 -o /tmp/libpcprof.so pcprof.c
 * Use:   qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu -plugin /tmp/libpcprof.so,out=/tmp/p.txt PROG ARGS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                                     uint64_t imm);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* Open addressing on the block's start address; a block translated again (same address) shares its slot. */
typedef struct { uint64_t pc, count; } slot;
#define SLOTS (1u << 22)
static slot *table;
static char out[4096];

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  uint64_t pc = qemu_plugin_tb_vaddr(tb);
  uint64_t h = (pc * 0x9E3779B97F4A7C15ull) >> 42;
  while (table[h].pc && table[h].pc != pc) h = (h + 1) & (SLOTS - 1);
  table[h].pc = pc;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &table[h].count, qemu_plugin_tb_n_insns(tb));
}

static void at_exit(qemu_plugin_id_t id, void *p) {
  FILE *f = fopen(out, "w");
  if (!f) return;
  for (size_t i = 0; i < SLOTS; i++)
    if (table[i].count) fprintf(f, "%llx %llu\n", (unsigned long long)table[i].pc, (unsigned long long)table[i].count);
  fclose(f);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                                               char **argv) {
  table = calloc(SLOTS, sizeof(slot));
  if (!table) return -1;
  snprintf(out, sizeof out, "/dev/stderr");
  for (int i = 0; i < argc; i++)
    if (!strncmp(argv[i], "out=", 4)) snprintf(out, sizeof out, "%s", argv[i] + 4);
  qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
