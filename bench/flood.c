/* flood: paced UDP sender for bench/capture_bench.py.
 *
 * Sends COUNT datagrams of SIZE payload bytes to DST:PORT with sendmmsg(2) in batches of BATCH,
 * at RATE datagrams per second (0: as fast as the kernel takes them). Payload: the 32-bit run
 * MARKER, then the 32-bit sequence number 0..COUNT-1 (both big-endian), then '.' padding.
 *
 * Pacing is a token bucket on CLOCK_MONOTONIC: batch k is due when the bucket holds its
 * packets, at start + (sent + batch) / RATE; the sender sleeps until then (clock_nanosleep,
 * absolute), so at low rates it leaves the CPU to the capture instead of spinning. The socket
 * is unconnected, so an ICMP port unreachable from the far end cannot fail a send.
 *
 * Prints one line: "sent N in S s = R pps" (the achieved rate, first send to last).
 *
 * Usage: flood DST PORT COUNT RATE SIZE MARKER [BATCH]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BATCH 1024
#define MAX_SIZE 1472

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double when)
{
    struct timespec ts;
    ts.tv_sec = (time_t)when;
    ts.tv_nsec = (long)((when - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 8) {
        fprintf(stderr, "usage: %s DST PORT COUNT RATE SIZE MARKER [BATCH]\n", argv[0]);
        return 2;
    }
    const char *dst = argv[1];
    long port = strtol(argv[2], NULL, 10);
    unsigned long count = strtoul(argv[3], NULL, 10);
    double rate = strtod(argv[4], NULL);
    long size = strtol(argv[5], NULL, 10);
    uint32_t marker = (uint32_t)strtoul(argv[6], NULL, 0);
    long batch = argc == 8 ? strtol(argv[7], NULL, 10) : 64;
    if (port < 1 || port > 65535 || size < 8 || size > MAX_SIZE || batch < 1 ||
        batch > MAX_BATCH || rate < 0 || count == 0 || count > 0xFFFFFFFFUL) {
        fprintf(stderr, "flood: argument out of range\n");
        return 2;
    }

    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, dst, &to.sin_addr) != 1) {
        fprintf(stderr, "flood: not an IPv4 address: %s\n", dst);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("flood: socket");
        return 1;
    }
    int sndbuf = 4 * 1024 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    static unsigned char payload[MAX_BATCH][MAX_SIZE];
    static struct iovec iov[MAX_BATCH];
    static struct mmsghdr msgs[MAX_BATCH];
    uint32_t marker_be = htonl(marker);
    for (long i = 0; i < batch; i++) {
        memset(payload[i], '.', (size_t)size);
        memcpy(payload[i], &marker_be, 4);
        iov[i].iov_base = payload[i];
        iov[i].iov_len = (size_t)size;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_name = &to;
        msgs[i].msg_hdr.msg_namelen = sizeof to;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    unsigned long sent = 0, errors = 0;
    double start = now_s();
    while (sent < count) {
        unsigned long n = count - sent < (unsigned long)batch ? count - sent : (unsigned long)batch;
        if (rate > 0) {
            double due = start + (double)(sent + n) / rate;
            if (due > now_s())
                sleep_until(due);
        }
        for (unsigned long i = 0; i < n; i++) {
            uint32_t seq_be = htonl((uint32_t)(sent + i));
            memcpy(payload[i] + 4, &seq_be, 4);
        }
        unsigned long done = 0;
        while (done < n) {
            int r = sendmmsg(fd, msgs + done, (unsigned int)(n - done), 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED) {
                    errors++; /* transient: the kernel refused; try the same datagram again */
                    continue;
                }
                perror("flood: sendmmsg");
                return 1;
            }
            done += (unsigned long)r;
        }
        sent += n;
    }
    double elapsed = now_s() - start;
    printf("sent %lu in %.6f s = %.0f pps (retried sends %lu)\n", sent, elapsed,
           elapsed > 0 ? (double)sent / elapsed : 0.0, errors);
    return 0;
}
