/* SPDX-License-Identifier: MIT */
#pragma once

/* Helpers shared by the unit tests: temporary folders and small files.
 * Everything here is static inline so a test that uses only part of it
 * still compiles with -Werror. */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A fresh folder; free it with tmpdir_remove().  In /dev/shm when there is
 * one: the ledger's synchronous=FULL makes every commit an fsync, which on
 * a disk shared with the other suites of make check costs the unit tests
 * most of their time; the files are real SQLite files all the same. */
static inline char *tmpdir_new(void) {
        char shm[] = "/dev/shm/retired-unit-XXXXXX", tmp[] = "/tmp/retired-unit-XXXXXX";
        char *made = mkdtemp(shm), *d;

        if (!made)
                made = mkdtemp(tmp);
        assert_non_null(made);
        d = strdup(made);
        assert_non_null(d);
        return d;
}

static inline int tmpdir_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st, (void) flag, (void) ftw;
        return remove(path);
}

/* Removes the folder and everything in it, then frees the name. */
static inline void tmpdir_remove(char *dir) {
        if (!dir)
                return;
        nftw(dir, tmpdir_rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(dir);
}

/* "dir/name", to be freed. */
static inline char *path_join(const char *dir, const char *name) {
        char *p;

        assert_true(asprintf(&p, "%s/%s", dir, name) >= 0);
        return p;
}

static inline void write_file(const char *path, const char *content) {
        FILE *f = fopen(path, "we");

        assert_non_null(f);
        assert_int_equal(fputs(content, f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
}

/* Writes dir/name and returns the full path, to be freed. */
static inline char *write_in(const char *dir, const char *name, const char *content) {
        char *p = path_join(dir, name);

        write_file(p, content);
        return p;
}

static inline bool file_exists(const char *path) {
        struct stat st;
        return lstat(path, &st) == 0;
}

/* The whole file, NUL-terminated, to be freed; *size gets its length. */
static inline char *read_all(const char *path, size_t *size) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t n = 0;

        assert_non_null(f);
        for (;;) {
                char *b = realloc(buf, n + 65536 + 1);
                size_t k;

                assert_non_null(b);
                buf = b;
                k = fread(buf + n, 1, 65536, f);
                n += k;
                if (k == 0)
                        break;
        }
        fclose(f);
        buf[n] = 0;
        if (size)
                *size = n;
        return buf;
}

/* Number of entries in a folder, "." and ".." excluded. */
static inline int count_entries(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        int n = 0;

        assert_non_null(d);
        while ((de = readdir(d)))
                n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
        closedir(d);
        return n;
}
