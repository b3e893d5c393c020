/* Preloaded into qemu-aarch64 (not the guest) by edgeemb.bench.instructions: every clock read advances
 * a per-thread clock by one microsecond from a fixed start. A guest that prints or branches on
 * the time (llama.cpp's timings, log stamps) then runs the same instructions in every run. */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/time.h>
#include <time.h>

static __thread unsigned long long ticks_ns;

int clock_gettime(clockid_t clock, struct timespec *now)
{
    ticks_ns += 1000;
    now->tv_sec = 1600000000 + ticks_ns / 1000000000ULL;
    now->tv_nsec = ticks_ns % 1000000000ULL;
    return 0;
}

int gettimeofday(struct timeval *now, void *zone)
{
    struct timespec exact;
    clock_gettime(CLOCK_REALTIME, &exact);
    if (now) {
        now->tv_sec = exact.tv_sec;
        now->tv_usec = exact.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *now)
{
    struct timespec exact;
    clock_gettime(CLOCK_REALTIME, &exact);
    if (now)
        *now = exact.tv_sec;
    return exact.tv_sec;
}
