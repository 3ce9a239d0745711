/*
 * bench/floor.c: the floor, a proxy that does as little as a proxy can, for the benchmark to
 * measure what the machine leaves for any proxy (`python -m bench --proxies
 * nutcracker,keyshard,floor`; `make bench` does not run it). It is a measuring instrument, not a product and not keyshard:
 * no config file, no timeouts, no stats, no ejection, no error replies of its own; anything it
 * does not expect (a server gone, a request it cannot frame) ends the connection or the
 * process.
 *
 * What it does, in one thread over epoll (level-triggered), per loop iteration:
 *   read every readable client and frame its requests (Redis multibulk, memcache text);
 *   Redis: MGET is split into one MGET per server (fnv1a_64 of the key, modulo the number of
 *   servers: both redis-servers of the bench hold every key, so where a key goes changes no
 *   reply); any other command goes whole to the server of its first argument (server 0 if
 *   none); memcache: every request goes whole to its one server;
 *   read every readable server, frame its replies, pair them with the oldest fragment sent to
 *   it (a FIFO per server), and complete requests; a client's replies leave in request order;
 *   then one write per server that was given requests in the iteration before (as keyshard's
 *   writer Rule 4 does: the requests other clients send meanwhile leave in the same write;
 *   FLOOR_HOLD=0 writes at once, and FLOOR_HOLD_US=N holds a server's write N microseconds,
 *   reading clients meanwhile), and one per client that has something to send.
 * A memcache `quit` closes the client (memcached would close the shared connection).
 * So per request it makes the syscalls a proxy cannot do without (a read and a write on the
 * client, shares of a read and a write per server) and spends next to nothing in user space.
 *
 * Usage: floor REDIS_LISTEN MC_LISTEN MC_SERVER REDIS_SERVER [REDIS_SERVER...]  (ports on
 * 127.0.0.1; MC_SERVER 0: no memcache pool, MC_LISTEN unused)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SERVERS 16
#define MAX_ARGS 4096
#define READ_ROOM 16384
#define MAX_BUF (64u << 20)  /* a connection whose buffer would pass this is closed */

typedef struct { char *p; size_t off, len, cap; } buf_t;  /* data is p[off..len) */

enum { L_REDIS, L_MC, C_REDIS, C_MC, S_REDIS, S_MC };

struct req;
typedef struct { struct req *req; int frag; } slot_t;

typedef struct conn {
    int fd, type, dirty, held, closed, want_out, eof;
    long since;                    /* server: when it was first held (ns) */
    int refs;                      /* requests of a client not yet answered */
    buf_t in, out;
    struct req *head, *tail;       /* client: requests in arrival order */
    slot_t *fifo;                  /* server: fragments sent, oldest first (a ring) */
    size_t fhead, fcount, fcap;
} conn_t;

typedef struct req {
    struct req *next;
    conn_t *client;
    int pending, nfrags, nkeys;
    char *reply; size_t rlen;      /* a whole request: its reply, if it came out of order */
    unsigned char *frag_of;        /* MGET: per key, its fragment */
    char *freply[MAX_SERVERS];     /* MGET: per fragment, its reply */
    size_t flen[MAX_SERVERS];
    int fserver[MAX_SERVERS];
} req_t;

static int ep;
static conn_t *servers[MAX_SERVERS];
static int nservers;
static conn_t *mc_server;
static conn_t **dirty;
static size_t ndirty, dirty_cap;

static void die(const char *what) { perror(what); exit(1); }

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) die("realloc");
    return p;
}

/* ---- buffers ------------------------------------------------------------------------------ */

static int buf_room(buf_t *b, size_t need) {
    if (b->off == b->len) b->off = b->len = 0;
    if (b->cap - b->len >= need) return 0;
    if (b->off > 0) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= need) return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < need) cap *= 2;
    if (cap > MAX_BUF) return -1;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
    return 0;
}

static int buf_add(buf_t *b, const char *s, size_t n) {
    if (buf_room(b, n) < 0) return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* prefix, the decimal digits of v, CRLF (a snprintf per key would cost more than the rest) */
static int buf_addnum(buf_t *b, char prefix, size_t v) {
    char tmp[24], *q = tmp + sizeof tmp;
    *--q = '\n';
    *--q = '\r';
    do { *--q = (char)('0' + v % 10); v /= 10; } while (v);
    *--q = prefix;
    return buf_add(b, q, (size_t)(tmp + sizeof tmp - q));
}

/* ---- framing ------------------------------------------------------------------------------ */

/* The length of the line at p (with its CRLF), 0 if incomplete. */
static size_t line_len(const char *p, size_t n) {
    const char *nl = memchr(p, '\n', n);
    return nl ? (size_t)(nl - p) + 1 : 0;
}

static long parse_num(const char *p, const char *end) {
    long v = 0;
    int neg = 0;
    if (p < end && *p == '-') { neg = 1; p++; }
    for (; p < end && *p >= '0' && *p <= '9'; p++) v = v * 10 + (*p - '0');
    return neg ? -v : v;
}

/* One whole RESP reply at p: its length, 0 if incomplete. */
static size_t resp_len(const char *p, size_t n) {
    size_t l = line_len(p, n);
    if (!l) return 0;
    if (p[0] == '$') {
        long v = parse_num(p + 1, p + l);
        if (v < 0) return l;
        return n >= l + (size_t)v + 2 ? l + (size_t)v + 2 : 0;
    }
    if (p[0] == '*') {
        long k = parse_num(p + 1, p + l);
        size_t at = l;
        for (long i = 0; i < k; i++) {
            size_t e = resp_len(p + at, n - at);
            if (!e) return 0;
            at += e;
        }
        return at;
    }
    return l;
}

/* One whole multibulk request at p: its length (0 if incomplete, -1 if not one), with the
 * offset and length of each argument. */
static long request_len(const char *p, size_t n, size_t *aoff, size_t *alen, int *argc) {
    size_t l = line_len(p, n);
    if (!l) return 0;
    if (p[0] != '*') return -1;
    long k = parse_num(p + 1, p + l);
    if (k < 1 || k > MAX_ARGS) return -1;
    size_t at = l;
    for (long i = 0; i < k; i++) {
        size_t h = line_len(p + at, n - at);
        if (!h) return 0;
        if (p[at] != '$') return -1;
        long v = parse_num(p + at + 1, p + at + h);
        if (v < 0) return -1;
        if (n - at < h + (size_t)v + 2) return 0;
        aoff[i] = at + h;
        alen[i] = (size_t)v;
        at += h + (size_t)v + 2;
    }
    *argc = (int)k;
    return (long)at;
}

/* One whole memcache request: a line, and for a storage command its data block. */
static size_t mc_request_len(const char *p, size_t n) {
    size_t l = line_len(p, n);
    if (!l) return 0;
    static const char *storage[] = {"set ", "add ", "replace ", "append ", "prepend ", "cas "};
    for (size_t i = 0; i < sizeof storage / sizeof *storage; i++) {
        size_t sl = strlen(storage[i]);
        if (l > sl && memcmp(p, storage[i], sl) == 0) {
            /* set <key> <flags> <exptime> <bytes>: the fifth word */
            const char *q = p, *end = p + l;
            for (int w = 0; w < 4 && q < end; w++) {
                while (q < end && *q != ' ') q++;
                while (q < end && *q == ' ') q++;
            }
            size_t bytes = (size_t)parse_num(q, end);
            return n >= l + bytes + 2 ? l + bytes + 2 : 0;
        }
    }
    return l;
}

/* One whole memcache reply: VALUE blocks up to a line that is not one (END, STORED, ...). */
static size_t mc_reply_len(const char *p, size_t n) {
    size_t at = 0;
    for (;;) {
        size_t l = line_len(p + at, n - at);
        if (!l) return 0;
        if (l > 6 && memcmp(p + at, "VALUE ", 6) == 0) {
            const char *q = p + at, *end = p + at + l;
            for (int w = 0; w < 3 && q < end; w++) {  /* VALUE <key> <flags> <bytes> */
                while (q < end && *q != ' ') q++;
                while (q < end && *q == ' ') q++;
            }
            size_t bytes = (size_t)parse_num(q, end);
            if (n - at < l + bytes + 2) return 0;
            at += l + bytes + 2;
            continue;
        }
        return at + l;
    }
}

static uint32_t fnv1a_64(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 0x100000001b3ULL; }
    return (uint32_t)h;
}

/* ---- connections -------------------------------------------------------------------------- */

static void mark(conn_t *c) {
    if (c->dirty) return;
    c->dirty = 1;
    if (c->type == S_REDIS || c->type == S_MC) return;  /* the loop walks the servers itself */
    if (ndirty == dirty_cap) {
        dirty_cap = dirty_cap ? dirty_cap * 2 : 256;
        dirty = xrealloc(dirty, dirty_cap * sizeof *dirty);
    }
    dirty[ndirty++] = c;
}

static conn_t *new_conn(int fd, int type) {
    conn_t *c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    c->fd = fd;
    c->type = type;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    return c;
}

static void free_client(conn_t *c) {
    free(c->in.p);
    free(c->out.p);
    free(c);
}

static void close_client(conn_t *c) {
    if (c->closed) return;
    c->closed = 1;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    mark(c);  /* freed at the end of the iteration, once no request of it is pending */
}

static void fifo_push(conn_t *s, req_t *r, int frag) {
    if (s->fcount == s->fcap) {
        size_t cap = s->fcap ? s->fcap * 2 : 256;
        slot_t *f = malloc(cap * sizeof *f);
        if (!f) die("malloc");
        for (size_t i = 0; i < s->fcount; i++) f[i] = s->fifo[(s->fhead + i) % s->fcap];
        free(s->fifo);
        s->fifo = f;
        s->fcap = cap;
        s->fhead = 0;
    }
    s->fifo[(s->fhead + s->fcount) % s->fcap] = (slot_t){r, frag};
    s->fcount++;
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 1024) < 0)
        die("listen");
    return fd;
}

/* ---- requests and replies ----------------------------------------------------------------- */

/* The reply of request r, fragments merged (MGET: elements in key order), onto b. */
static int put_reply(buf_t *b, req_t *r) {
    if (!r->frag_of) return buf_add(b, r->reply, r->rlen);
    for (int f = 0; f < r->nfrags; f++)
        if (r->freply[f][0] != '*') return buf_add(b, r->freply[f], r->flen[f]);
    size_t cur[MAX_SERVERS];
    for (int f = 0; f < r->nfrags; f++) cur[f] = line_len(r->freply[f], r->flen[f]);
    if (buf_addnum(b, '*', (size_t)r->nkeys) < 0) return -1;
    for (int k = 0; k < r->nkeys; k++) {
        int f = r->frag_of[k];
        const char *e = r->freply[f] + cur[f];
        size_t el = resp_len(e, r->flen[f] - cur[f]);
        if (buf_add(b, e, el) < 0) return -1;
        cur[f] += el;
    }
    return 0;
}

static void free_req(req_t *r) {
    free(r->reply);
    free(r->frag_of);
    for (int f = 0; f < r->nfrags; f++) free(r->freply[f]);
    free(r);
}

/* Move the answered requests at the head of client c to its output, in order. */
static void drain(conn_t *c) {
    while (c->head && c->head->pending == 0) {
        req_t *r = c->head;
        c->head = r->next;
        if (!c->head) c->tail = NULL;
        c->refs--;
        if (!c->closed) {
            if (put_reply(&c->out, r) < 0) close_client(c);
            else mark(c);
        }
        free_req(r);
    }
    if (c->closed && c->refs == 0) mark(c);
}

static req_t *new_req(conn_t *c) {
    req_t *r = calloc(1, sizeof *r);
    if (!r) die("calloc");
    r->client = c;
    if (c->tail) c->tail->next = r; else c->head = r;
    c->tail = r;
    c->refs++;
    return r;
}

static void send_whole(conn_t *c, conn_t *s, const char *p, size_t n) {
    req_t *r = new_req(c);
    r->nfrags = r->pending = 1;
    if (buf_add(&s->out, p, n) < 0) die("server buffer");
    fifo_push(s, r, 0);
    mark(s);
}

static void send_mget(conn_t *c, const char *p, const size_t *aoff, const size_t *alen,
                      int argc) {
    req_t *r = new_req(c);
    int nkeys = argc - 1, frag_of_server[MAX_SERVERS], count[MAX_SERVERS] = {0};
    unsigned char *srv = malloc((size_t)nkeys);
    r->frag_of = malloc((size_t)nkeys);
    if (!srv || !r->frag_of) die("malloc");
    r->nkeys = nkeys;
    for (int s = 0; s < nservers; s++) frag_of_server[s] = -1;
    for (int k = 0; k < nkeys; k++) {
        int s = (int)(fnv1a_64(p + aoff[k + 1], alen[k + 1]) % (uint32_t)nservers);
        srv[k] = (unsigned char)s;
        if (frag_of_server[s] < 0) {
            frag_of_server[s] = r->nfrags;
            r->fserver[r->nfrags++] = s;
        }
        r->frag_of[k] = (unsigned char)frag_of_server[s];
        count[s]++;
    }
    r->pending = r->nfrags;
    for (int f = 0; f < r->nfrags; f++) {
        int s = r->fserver[f];
        buf_t *o = &servers[s]->out;
        if (buf_addnum(o, '*', (size_t)count[s] + 1) < 0 || buf_add(o, "$4\r\nMGET\r\n", 10) < 0)
            die("server buffer");
        for (int k = 0; k < nkeys; k++) {
            if (srv[k] != s) continue;
            if (buf_addnum(o, '$', alen[k + 1]) < 0
                || buf_add(o, p + aoff[k + 1], alen[k + 1] + 2) < 0)
                die("server buffer");
        }
        fifo_push(servers[s], r, f);
        mark(servers[s]);
    }
    free(srv);
}

static void client_requests(conn_t *c) {
    static size_t aoff[MAX_ARGS], alen[MAX_ARGS];
    buf_t *b = &c->in;
    while (b->off < b->len) {
        const char *p = b->p + b->off;
        size_t n = b->len - b->off;
        if (c->type == C_MC) {
            size_t l = mc_request_len(p, n);
            if (!l) return;
            if (l >= 4 && memcmp(p, "quit", 4) == 0 && (l == 5 || l == 6)) {  /* not forwarded */
                close_client(c);
                return;
            }
            send_whole(c, mc_server, p, l);
            b->off += l;
            continue;
        }
        int argc = 0;
        long l = request_len(p, n, aoff, alen, &argc);
        if (l < 0) { close_client(c); return; }
        if (l == 0) return;
        if (argc > 1 && alen[0] == 4 && strncasecmp(p + aoff[0], "mget", 4) == 0)
            send_mget(c, p, aoff, alen, argc);
        else {
            int s = argc > 1 ? (int)(fnv1a_64(p + aoff[1], alen[1]) % (uint32_t)nservers) : 0;
            send_whole(c, servers[s], p, (size_t)l);
        }
        b->off += (size_t)l;
    }
}

static void server_replies(conn_t *s) {
    buf_t *b = &s->in;
    while (b->off < b->len) {
        const char *p = b->p + b->off;
        size_t n = b->len - b->off;
        size_t l = s->type == S_MC ? mc_reply_len(p, n) : resp_len(p, n);
        if (!l) return;
        if (s->fcount == 0) { fprintf(stderr, "floor: a reply nobody asked for\n"); exit(1); }
        slot_t sl = s->fifo[s->fhead];
        s->fhead = (s->fhead + 1) % s->fcap;
        s->fcount--;
        req_t *r = sl.req;
        conn_t *c = r->client;
        if (!r->frag_of && c->head == r && !c->closed) {  /* in order: straight to the client */
            if (buf_add(&c->out, p, l) < 0) close_client(c);
            else mark(c);
            c->head = r->next;
            if (!c->head) c->tail = NULL;
            c->refs--;
            free_req(r);
        } else {
            char *copy = malloc(l);
            if (!copy) die("malloc");
            memcpy(copy, p, l);
            if (r->frag_of) { r->freply[sl.frag] = copy; r->flen[sl.frag] = l; }
            else { r->reply = copy; r->rlen = l; }
            r->pending--;
        }
        b->off += l;
        drain(c);
    }
}

/* ---- the loop ----------------------------------------------------------------------------- */

static void set_out_interest(conn_t *c, int want) {
    if (c->want_out == want && !c->eof) return;
    c->want_out = want;
    struct epoll_event ev = {.events = (c->eof ? 0 : EPOLLIN) | (want ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what c has to send; 0, or -1 when the connection failed. */
static int flush(conn_t *c) {
    buf_t *b = &c->out;
    while (b->off < b->len) {
        ssize_t w = write(c->fd, b->p + b->off, b->len - b->off);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        b->off += (size_t)w;
    }
    set_out_interest(c, b->off < b->len);
    return 0;
}

static void on_readable(conn_t *c) {
    if (c->type == L_REDIS || c->type == L_MC) {
        int fd, one = 1;
        while ((fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            new_conn(fd, c->type == L_REDIS ? C_REDIS : C_MC);
        }
        return;
    }
    if (buf_room(&c->in, READ_ROOM) < 0) {
        if (c->type == S_REDIS || c->type == S_MC) die("server reply too big");
        close_client(c);
        return;
    }
    ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (c->type == S_REDIS || c->type == S_MC) { fprintf(stderr, "floor: server gone\n"); exit(1); }
        if (n == 0 && (c->refs > 0 || c->out.off < c->out.len)) {
            c->eof = 1;  /* the client is done sending: answer what it sent, then close */
            set_out_interest(c, c->out.off < c->out.len);
        } else {
            close_client(c);
        }
        return;
    }
    c->in.len += (size_t)n;
    if (c->type == S_REDIS || c->type == S_MC) server_replies(c);
    else client_requests(c);
}

/* Write each server that is due: one iteration after its first request, and with a window
 * not before `window` ns (hold 0: at once). Returns whether a server is still held, and its
 * oldest hold's start in *oldest. */
static int flush_servers(conn_t **all, int nall, int hold, long window, long *oldest) {
    long now = window > 0 ? now_ns() : 0;
    int held = 0;
    for (int i = 0; i < nall; i++) {
        conn_t *s = all[i];
        if (s->dirty && !s->held && hold) {
            s->held = 1;
            s->since = now;
        } else if (s->dirty || s->held) {
            if (!s->held || now - s->since >= window) {
                s->held = s->dirty = 0;
                if (flush(s) < 0) { fprintf(stderr, "floor: server write failed\n"); exit(1); }
                continue;
            }
        }
        s->dirty = 0;
        if (s->held && (!held || s->since < *oldest)) *oldest = s->since;
        held |= s->held;
    }
    return held;
}

/* Write the clients' replies; free the closed clients nobody waits on. */
static void flush_clients(void) {
    for (size_t i = 0; i < ndirty; i++) {
        conn_t *c = dirty[i];
        c->dirty = 0;
        if (c->closed) {
            if (c->refs == 0) free_client(c);
            continue;
        }
        if (flush(c) < 0 || (c->eof && c->refs == 0 && c->out.off == c->out.len))
            close_client(c);  /* marks it again: freed further down this list */
    }
    ndirty = 0;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: floor REDIS_LISTEN MC_LISTEN MC_SERVER REDIS_SERVER...\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    nservers = argc - 4;
    if (nservers > MAX_SERVERS) { fprintf(stderr, "floor: at most %d servers\n", MAX_SERVERS); return 2; }
    for (int i = 0; i < nservers; i++) servers[i] = new_conn(connect_to(atoi(argv[4 + i])), S_REDIS);
    new_conn(listen_on(atoi(argv[1])), L_REDIS);
    if (atoi(argv[3]) > 0) {  /* MC_SERVER 0: no memcache pool */
        mc_server = new_conn(connect_to(atoi(argv[3])), S_MC);
        new_conn(listen_on(atoi(argv[2])), L_MC);
    }
    struct epoll_event evs[512];
    conn_t *all_servers[MAX_SERVERS + 1];
    int nall = nservers;
    for (int i = 0; i < nservers; i++) all_servers[i] = servers[i];
    if (mc_server) all_servers[nall++] = mc_server;
    const char *hold_env = getenv("FLOOR_HOLD"), *window_env = getenv("FLOOR_HOLD_US");
    int hold = !(hold_env && strcmp(hold_env, "0") == 0), held = 0;
    long window = window_env ? atol(window_env) * 1000 : 0, oldest = 0;  /* ns */
    for (;;) {
        int n;
        if (held && window > 0) {  /* wait for more requests until the oldest batch is due */
            long left = oldest + window - now_ns();
            struct timespec to = {0, left > 0 ? left : 0};
            n = epoll_pwait2(ep, evs, 512, &to, NULL);
        } else {
            n = epoll_wait(ep, evs, 512, held ? 0 : -1);
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->closed) continue;
            if (evs[i].events & EPOLLOUT) mark(c);
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
        /* servers: written one iteration after their first request, and with FLOOR_HOLD_US
         * not before that many microseconds (FLOOR_HOLD=0: at once); then the clients */
        held = flush_servers(all_servers, nall, hold, window, &oldest);
        flush_clients();
    }
}
