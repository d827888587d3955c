/* LD_PRELOAD shim for wrk (proxy-cpu.sh, TLS=1 NEW_CONN=1 TLS_RESUME=0): every TLS connection
 * wrk makes is a full handshake.
 *
 * wrk keeps the SSL object of a connection across reconnects (SSL_clear), so OpenSSL offers the
 * previous session (a TLS 1.3 ticket) on the next connect and the server resumes it: no
 * certificate, no signature. This wraps SSL_connect to drop that session first.
 *
 *   cc -O2 -shared -fPIC -o tls-no-resume.so bench/peers/tls-no-resume.c -ldl
 *   LD_PRELOAD=$PWD/tls-no-resume.so wrk ... https://...
 *
 * No OpenSSL headers needed: the two functions are looked up at run time in the libssl wrk
 * already loaded. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

int SSL_connect(SSL *ssl) {
    static int (*real_connect)(SSL *);
    static int (*set_session)(SSL *, SSL_SESSION *);
    if (!real_connect) {
        real_connect = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
        set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_NEXT, "SSL_set_session");
    }
    /* SSL_connect is called again while a handshake waits for the socket (non-blocking):
     * only drop the session before the first call of each handshake. wrk calls SSL_clear()
     * on close, which resets the handshake state, and SSL_in_before() is true until the
     * ClientHello is written. */
    static int (*in_before)(const SSL *);
    if (!in_before) in_before = (int (*)(const SSL *))dlsym(RTLD_NEXT, "SSL_in_before");
    if (set_session && in_before && in_before(ssl)) set_session(ssl, NULL);
    return real_connect(ssl);
}
