/* What one flush of several buffers costs the sender of a loopback TCP connection: joined
 * (malloc, memcpy, one write) against gathered (one writev of the buffers as they are).
 *
 *   cc -O2 -o /tmp/gather bench/gather.c -lpthread && /tmp/gather BUFFERS BYTES FLUSHES
 *
 * A second thread drains the other end (and counts it: every byte must arrive, exit 1 if
 * not). The figure is the sending thread's CPU (user and system, getrusage RUSAGE_THREAD)
 * per flush, twice for each way; on loopback that includes
 * the receiver's TCP input, which runs in the sender's write. It is why writer Rule 5
 * (src/keyshard/net/writer.py) joins a flush of small buffers: the kernel's cost per
 * buffer in a writev is more than a join's copy of a short one.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static int drain_fd;
static size_t drained;

static void *drain(void *unused) {
    static char buf[1 << 20];
    ssize_t n;
    (void)unused;
    while ((n = read(drain_fd, buf, sizeof buf)) > 0)
        drained += (size_t)n;
    return NULL;
}

static double thread_cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_THREAD, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec / 1e6;
}

static int write_all(int fd, const char *p, size_t len) {
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int joined(int fd, struct iovec *iov, int k, size_t total) {
    char *b = malloc(total), *p = b;
    for (int i = 0; i < k; i++) {
        memcpy(p, iov[i].iov_base, iov[i].iov_len);
        p += iov[i].iov_len;
    }
    int rc = write_all(fd, b, total);
    free(b);
    return rc;
}

static int gathered(int fd, struct iovec *iov, int k, size_t total) {
    ssize_t n = writev(fd, iov, k);
    if (n < 0)
        return -1;
    if ((size_t)n == total)
        return 0;
    for (int i = 0; i < k; i++) { /* the rest, buffer by buffer (rare: the drain keeps up) */
        size_t len = iov[i].iov_len, skip = (size_t)n < len ? (size_t)n : len;
        n -= (ssize_t)skip;
        if (write_all(fd, (char *)iov[i].iov_base + skip, len - skip) < 0)
            return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BUFFERS BYTES FLUSHES\n", argv[0]);
        return 2;
    }
    int k = atoi(argv[1]), size = atoi(argv[2]), flushes = atoi(argv[3]), one = 1;
    if (k < 1 || k > 1024 || size < 1 || flushes < 1) {
        fprintf(stderr, "BUFFERS 1..1024, BYTES and FLUSHES at least 1\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int lfd = socket(AF_INET, SOCK_STREAM, 0), fd = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 1) ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) ||
        connect(fd, (struct sockaddr *)&a, sizeof a) || (drain_fd = accept(lfd, 0, 0)) < 0) {
        perror("loopback connection");
        return 1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_t t;
    pthread_create(&t, NULL, drain, NULL);
    struct iovec *iov = calloc((size_t)k, sizeof *iov);
    for (int i = 0; i < k; i++) {
        iov[i].iov_base = malloc((size_t)size);
        iov[i].iov_len = (size_t)size;
        memset(iov[i].iov_base, 'a' + i % 26, (size_t)size);
    }
    size_t total = (size_t)k * (size_t)size;
    for (int way = 0; way < 2; way++) {
        for (int rep = 0; rep < 2; rep++) {
            double t0 = thread_cpu();
            for (int f = 0; f < flushes; f++) {
                if ((way ? gathered : joined)(fd, iov, k, total) < 0) {
                    perror("write");
                    return 1;
                }
            }
            printf("%d buffers of %d bytes, %s: %.2f us per flush\n", k, size,
                   way ? "writev" : "joined, write", (thread_cpu() - t0) / flushes * 1e6);
        }
    }
    shutdown(fd, SHUT_WR);
    pthread_join(t, NULL);
    size_t sent = total * (size_t)flushes * 4;
    printf("%zu bytes sent, %zu received\n", sent, drained);
    return drained == sent ? 0 : 1;
}
