// A process that dies of SIGSEGV/SIGBUS/SIGABRT appends its native backtrace (module+offset per
// frame) and its executable mappings to $SEGV_LOG. For native crashes Python's faulthandler cannot
// see into, e.g. the python-backend stub (benchmarks/results/gpu_stub_probe_pruned.json); it runs
// after faulthandler, which hands the signal on. Resolve a stub frame with
// `addr2line -C -f -e triton_python_backend_stub <offset - 1>` on the same wheel's binary.
//
//   gcc -O1 -shared -fPIC -o /tmp/segv_backtrace.so benchmarks/segv_backtrace.c
//   SEGV_LOG=$PWD/segv.log LD_PRELOAD=/tmp/segv_backtrace.so python3 benchmarks/gpu_triton_llama7b.py ...
#define _GNU_SOURCE
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void handler(int sig, siginfo_t *si, void *ctx) {
  const char *path = getenv("SEGV_LOG");
  int fd = path ? open(path, O_WRONLY | O_CREAT | O_APPEND, 0644) : 2;
  char head[256];
  int n = snprintf(head, sizeof head, "=== signal %d pid %d tid %ld addr %p\n", sig, getpid(),
                   (long)syscall(SYS_gettid), si ? si->si_addr : 0);
  write(fd, head, n);
  void *frames[96];
  int count = backtrace(frames, 96);
  backtrace_symbols_fd(frames, count, fd);
  int maps = open("/proc/self/maps", O_RDONLY);
  char buf[4096];
  ssize_t r;
  write(fd, "--- maps (r-xp)\n", 16);
  // only executable mappings, to turn addresses into module offsets
  static char line[512]; int len = 0;
  while (maps >= 0 && (r = read(maps, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < r; i++) {
      if (len < (int)sizeof line - 1) line[len++] = buf[i];
      if (buf[i] == '\n') { line[len] = 0; if (strstr(line, " r-xp ")) write(fd, line, len); len = 0; }
    }
  }
  if (fd != 2) close(fd);
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, 0);
  sigaction(SIGBUS, &sa, 0);
  sigaction(SIGABRT, &sa, 0);
}
