/*
 * LD_PRELOAD shim for benchmarks: sets TCP_NODELAY on every accepted socket of the process
 * it is loaded into (bench/load.sh: MOCK_NODELAY=1 / GATEWAY_NODELAY=1).
 *
 * Builds of switchyard from before TCP_NODELAY was set on accepted sockets stall every
 * streamed response ~40 ms on loopback: the response headers leave alone (the mock's
 * zero-length sleep parks the body for a timer tick), the first body chunk then waits under
 * Nagle's algorithm for the client's delayed ACK. The shim measures such a build as if the
 * option were set, which is how that fix was sized.
 *
 * Build: cc -O2 -shared -fPIC -o nodelay_preload.so bench/nodelay_preload.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void set_nodelay(int fd) {
    if (fd >= 0) {
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on non-TCP */
    }
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int s = real(fd, addr, len);
    set_nodelay(s);
    return s;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int s = real(fd, addr, len, flags);
    set_nodelay(s);
    return s;
}
