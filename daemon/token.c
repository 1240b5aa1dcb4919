/* SPDX-License-Identifier: MIT */
/* The API key: read once at start (and at a reload), from a file only its
 * owner may read, and named in the journal by a fingerprint only. */

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "token.h"

int token_fingerprint(const char *token, char buf[static TOKEN_FINGERPRINT_LEN + 1]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned n = 0;

        if (EVP_Digest(token, strlen(token), md, &n, EVP_sha256(), NULL) != 1 || n < TOKEN_FINGERPRINT_LEN / 2)
                return -EIO;
        for (unsigned i = 0; i < TOKEN_FINGERPRINT_LEN / 2; i++)
                snprintf(buf + 2 * i, 3, "%02x", md[i]);
        return 0;
}

/* The key must be the owner's alone: a key others can read is a leaked key,
 * and we would rather not start than use it. */
int token_load(const Config *c, char **ret, char **where) {
        _cleanup_free_ char *path = NULL;
        _cleanup_(erase_and_freep) char *buf = NULL;
        _cleanup_close_ int fd = -1;
        const char *dir;
        struct stat st;
        ssize_t n;

        if (c->token_file[0])
                path = strdup(c->token_file);
        else if ((dir = getenv("CREDENTIALS_DIRECTORY")) && *dir)
                (void) asprintf_or_null(&path, "%s/api-token", dir);
        else {
                *where = strdup("api.token_file is empty and there is no $CREDENTIALS_DIRECTORY "
                                "(LoadCredential=api-token:...)");
                return *where ? -ENOKEY : -ENOMEM;
        }
        if (!path)
                return -ENOMEM;
        *where = strdup(path);
        if (!*where)
                return -ENOMEM;
        /* O_NONBLOCK: a FIFO put in its place must not hang the daemon. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return negative_errno();
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if (st.st_mode & 0077)
                return -EPERM;
        if (st.st_size > TOKEN_MAX)
                return -EFBIG;
        buf = calloc(1, TOKEN_MAX + 2);
        if (!buf)
                return -ENOMEM;
        n = read(fd, buf, TOKEN_MAX + 1);
        if (n < 0)
                return negative_errno();
        if (n > TOKEN_MAX)
                return -EFBIG;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
                buf[--n] = 0;
        if (n == 0)
                return -ENODATA;
        for (ssize_t i = 0; i < n; i++)
                if (buf[i] <= ' ' || buf[i] > '~')
                        return -EBADMSG;
        *ret = TAKE_PTR(buf);
        return 0;
}
