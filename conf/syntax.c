/* SPDX-License-Identifier: MIT */
/* The small grammars inside the config: UUIDs, phone numbers, RFC 3339
 * times, and the FILE:LINE diagnostics that report them. */

#include <ctype.h>
#include <stdarg.h>
#include <time.h>

#include "conf.h"
#include "macro.h"

void conf_diag_done(ConfDiag *d) {
        for (size_t i = 0; i < d->n; i++)
                free(d->lines[i]);
        free(d->lines);
        *d = (ConfDiag) {};
}

void conf_diag_add(ConfDiag *d, const char *file, unsigned line, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        char *l, **a;
        va_list ap;
        int r;

        if (d->n >= CONF_MAX_DIAG) {
                d->dropped++;
                return;
        }
        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return;
        if (!file)
                l = TAKE_PTR(msg);
        else if (line > 0)
                r = asprintf(&l, "%s:%u: %s", file, line, msg);
        else
                r = asprintf(&l, "%s: %s", file, msg);
        if (r < 0)
                return;
        a = reallocarray(d->lines, d->n + 1, sizeof(char *));
        if (!a) {
                free(l);
                return;
        }
        d->lines = a;
        d->lines[d->n++] = l;
}

bool uuid_is_valid(const char *s) {
        if (!s || strlen(s) != UUID_STRING_LEN)
                return false;
        for (size_t i = 0; i < UUID_STRING_LEN; i++) {
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (s[i] != '-')
                                return false;
                } else if (!isdigit((unsigned char) s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
                        return false;
        }
        return true;
}

/* Dashboards and spreadsheets show UUIDs in capitals, and the API accepts
 * either case (RFC 4122 says to compare them without it): one phone must
 * have one spelling everywhere (ledger keys, the plan, every comparison),
 * the lowercase one. */
bool uuid_canonical(const char *s, char ret[static UUID_STRING_LEN + 1]) {
        if (!s || strlen(s) != UUID_STRING_LEN)
                return false;
        for (size_t i = 0; i <= UUID_STRING_LEN; i++)
                ret[i] = (char) tolower((unsigned char) s[i]);
        return uuid_is_valid(ret);
}

/* Numbers are compared after dropping the punctuation people write them
 * with; a SIP identifier (user@host) is an opaque name and stays as written. */
int number_normalize(const char *in, char **ret) {
        size_t len = strlen(in), digits = 0;
        _cleanup_free_ char *out = NULL;
        char *o;

        if (len == 0)
                return -EINVAL;
        if (strchr(in, '@')) {
                if (len > CONF_MAX_SIP)
                        return -E2BIG;
                for (const char *p = in; *p; p++)
                        if (!isgraph((unsigned char) *p))
                                return -EINVAL;
                if (in[0] == '@' || in[len - 1] == '@' || strchr(in, '@') != strrchr(in, '@'))
                        return -EINVAL;
                out = strdup(in);
                if (!out)
                        return -ENOMEM;
                *ret = TAKE_PTR(out);
                return 0;
        }
        if (len > CONF_MAX_NUMBER)
                return -E2BIG;
        out = o = malloc(len + 1);
        if (!out)
                return -ENOMEM;
        for (const char *p = in; *p; p++) {
                if (isdigit((unsigned char) *p)) {
                        *o++ = *p;
                        digits++;
                } else if (*p == '+' && o == out)
                        *o++ = '+';
                else if (!strchr(" .-()", *p))
                        return -EINVAL;
        }
        *o = 0;
        if (digits < 3 || digits > 20)
                return -ERANGE;
        *ret = TAKE_PTR(out);
        return 0;
}

/* RFC 3339 in UTC only ("Z" or "+00:00"): a release time in some other zone
 * is a misunderstanding waiting to happen, so it is refused. */
int rfc3339_parse(const char *s, int64_t *ret) {
        struct tm tm = {}, back;
        int n = 0, y, mo, d, h, mi, sec;
        const char *p;
        time_t t;

        /* sscanf's %d would take blanks and signs: check the shape first. */
        for (int i = 0; i < 19; i++)
                if (!(i == 4 || i == 7 ? s[i] == '-' : i == 10 ? s[i] == 'T' : i == 13 || i == 16 ? s[i] == ':' :
                      isdigit((unsigned char) s[i])))
                        return -EINVAL;
        if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
                return -EINVAL;
        p = s + n;
        if (*p == '.') {
                p++;
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                while (isdigit((unsigned char) *p))
                        p++;
        }
        if (!streq(p, "Z") && !streq(p, "+00:00"))
                return -EINVAL;
        if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > 31 ||
            h > 23 || mi > 59 || sec > 59)
                return -ERANGE;
        tm = (struct tm) { .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d,
                           .tm_hour = h, .tm_min = mi, .tm_sec = sec };
        t = timegm(&tm);
        /* timegm() normalises 31 February into March: refuse that. */
        if (t == (time_t) -1 || !gmtime_r(&t, &back) || back.tm_mday != d || back.tm_mon != mo - 1)
                return -ERANGE;
        *ret = (int64_t) t;
        return 0;
}

int rfc3339_format(int64_t t, char buf[static 21]) {
        time_t tt = (time_t) t;
        struct tm tm;

        if (!gmtime_r(&tt, &tm) || strftime(buf, 21, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                return -ERANGE;
        return 0;
}

InUse in_use_from_string(const char *s) {
        return !s ? IN_USE_UNSET : streq(s, "refuse") ? IN_USE_REFUSE : streq(s, "release") ? IN_USE_RELEASE :
               IN_USE_UNSET;
}

const char *in_use_to_string(InUse v) {
        return v == IN_USE_REFUSE ? "refuse" : v == IN_USE_RELEASE ? "release" : NULL;
}
