/*
 * statx compatibility for sandboxes on runsc 20221219 (Debian 12's gVisor).
 *
 * That runsc answers statx(2) with EINVAL when the flags include AT_NO_AUTOMOUNT, which
 * coreutils 9 always passes: `ls`, `stat` and `cp -a` fail with "Invalid argument" inside the
 * sandbox. gVisor has no automounts, so the flag means nothing there; this library, preloaded
 * into every process the sandbox agent starts (LD_PRELOAD), drops it and makes the call.
 * Newer runsc releases accept the flag: set [sandbox] statx_compat = false with one of those.
 *
 * C, not Rust: it must be a tiny shared object with no runtime of its own, loaded into
 * arbitrary programs.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    return (int)syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}
