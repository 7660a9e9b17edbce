/* test_auth.c - the tokens file (valid files, every malformed line with its
 * line number), constant-time checks and creating tokens (mode 0600, append).
 * Files live in a mkdtemp directory (the throttle: test_throttle.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "auth.h"
#include "err.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* SHA-256 of known tokens, as `printf %s TOKEN | sha256sum` prints them. */
#define HEX_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define H_ABC "sha256:" HEX_ABC                                                          /* "abc" */
#define H_ALPHA "sha256:a336d9b1d8b8647875238537ca5087b0ea335afd2032936aecdffc3e4b13f720" /* alpha-token */
#define H_BETA "sha256:863d63c0bd3a94bfca84ed2063a7355a226faff82ca50b90158bf183aa1a9e61"  /* beta-token */
#define H_GAMMA_UPPER "sha256:6BE6BA7A6EF7E0422D11AAF33CF3E9290FF8186E391F846C1CF23FE7594A9B19" /* gamma-token */
#define H_EMPTY "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" /* "" */

#define NAME64 "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._"

typedef struct fixture {
    char dir[64];   /* mkdtemp directory, removed with everything in it */
    char path[128]; /* dir/tokens, not created by setup */
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    strcpy(f->dir, "/tmp/ic_test_auth_XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/tokens", f->dir);
    umask(022);
    *state = f;
    return 0;
}

static int remove_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static int teardown(void **state)
{
    fixture *f = *state;
    nftw(f->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void write_bytes(const char *path, const char *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

/* Reads a whole small file into buf; returns its length. */
static size_t read_text(const char *path, char *buf, size_t cap)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, cap - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return n;
}

static ic_auth *load_ok(const char *path)
{
    ic_auth *a = NULL;
    char err[256] = "unset";
    int rc = ic_auth_load(path, &a, err, sizeof err);
    if (rc != 0)
        fail_msg("load failed: %s", err);
    assert_non_null(a);
    return a;
}

static void assert_client(const ic_auth *a, const char *token, const char *name, int max_sessions,
                          enum ic_priority priority)
{
    ic_client_cfg cfg;
    memset(&cfg, 0x55, sizeof cfg);
    assert_int_equal(ic_auth_check(a, token, &cfg), 0);
    assert_string_equal(cfg.name, name);
    assert_int_equal(cfg.max_sessions, max_sessions);
    assert_int_equal(cfg.priority, priority);
}

/* ---- loading ---------------------------------------------------------- */

static void loads_comments_blanks_and_options(void **state)
{
    fixture *f = *state;
    write_text(f->path, "# InferenceCenter tokens\n"
                        "\n"
                        "   \t \n"
                        "  # an indented comment\n"
                        "alice " H_ALPHA "\n"
                        "\tbob\t" H_BETA "  max_sessions=3\tpriority=high  \n"
                        "carol " H_GAMMA_UPPER " priority=low max_sessions=4096\n"
                        NAME64 " " H_ABC " max_sessions=1"); /* no final newline */
    ic_auth *a = load_ok(f->path);
    assert_int_equal(ic_auth_count(a), 4);
    assert_client(a, "alpha-token", "alice", 0, IC_PRIORITY_NORMAL);
    assert_client(a, "beta-token", "bob", 3, IC_PRIORITY_HIGH);
    assert_client(a, "gamma-token", "carol", 4096, IC_PRIORITY_LOW); /* uppercase hex */
    assert_client(a, "abc", NAME64, 1, IC_PRIORITY_NORMAL);
    ic_auth_destroy(a);
}

static void loads_crlf_line_endings(void **state)
{
    fixture *f = *state;
    write_text(f->path, "# written on Windows\r\n"
                        "\r\n"
                        "alice " H_ALPHA "\r\n"
                        "bob " H_BETA " priority=low\r\n");
    ic_auth *a = load_ok(f->path);
    assert_int_equal(ic_auth_count(a), 2);
    assert_client(a, "alpha-token", "alice", 0, IC_PRIORITY_NORMAL);
    assert_client(a, "beta-token", "bob", 0, IC_PRIORITY_LOW);
    ic_auth_destroy(a);
}

static void one_name_may_have_two_tokens(void **state)
{
    fixture *f = *state;
    write_text(f->path, "alice " H_ALPHA " max_sessions=2\n"
                        "alice " H_BETA " max_sessions=2\n");
    ic_auth *a = load_ok(f->path);
    assert_int_equal(ic_auth_count(a), 2);
    assert_client(a, "alpha-token", "alice", 2, IC_PRIORITY_NORMAL);
    assert_client(a, "beta-token", "alice", 2, IC_PRIORITY_NORMAL);
    ic_auth_destroy(a);
}

/* Loads text, expects IC_ERR_PARSE and "PATH:LINE: ..." containing reason. */
static void expect_parse_error(const char *path, const char *text, size_t len, int line,
                               const char *reason)
{
    write_bytes(path, text, len);
    ic_auth *a = (ic_auth *)1;
    char err[512] = "", prefix[256];
    int rc = ic_auth_load(path, &a, err, sizeof err);
    if (rc != IC_ERR_PARSE || !strstr(err, reason))
        fail_msg("line %d: rc %d, err '%s', wanted '%s'", line, rc, err, reason);
    assert_null(a);
    snprintf(prefix, sizeof prefix, "%s:%d: ", path, line);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("err '%s' does not start with '%s'", err, prefix);
}

static void admin_option(void **state)
{
    fixture *f = *state;
    write_text(f->path, "root " H_ALPHA " admin=true\n"
                        "bob " H_BETA " admin=false priority=high\n"
                        "carol " H_GAMMA_UPPER "\n");
    ic_auth *a = load_ok(f->path);
    ic_client_cfg cfg;
    assert_int_equal(ic_auth_check(a, "alpha-token", &cfg), 0);
    assert_true(cfg.admin);
    assert_int_equal(ic_auth_check(a, "beta-token", &cfg), 0);
    assert_false(cfg.admin);
    assert_int_equal(cfg.priority, IC_PRIORITY_HIGH);
    assert_int_equal(ic_auth_check(a, "gamma-token", &cfg), 0);
    assert_false(cfg.admin);
    ic_auth_destroy(a);
    expect_parse_error(f->path, "root " H_ALPHA " admin=yes\n",
                       strlen("root " H_ALPHA " admin=yes\n"), 1, "admin must be true or false");
    expect_parse_error(f->path, "root " H_ALPHA " admin=true admin=true\n",
                       strlen("root " H_ALPHA " admin=true admin=true\n"), 1, "admin given twice");
    /* token add --admin writes admin=true, and the token it prints is an admin's */
    remove(f->path);
    char tok[80], err[256];
    assert_int_equal(ic_auth_add_token_admin(f->path, "root", 0, IC_PRIORITY_NORMAL, true, tok,
                                             sizeof tok, err, sizeof err),
                     0);
    char text[512];
    read_text(f->path, text, sizeof text);
    assert_non_null(strstr(text, " admin=true\n"));
    a = load_ok(f->path);
    assert_int_equal(ic_auth_check(a, tok, &cfg), 0);
    assert_true(cfg.admin);
    ic_auth_destroy(a);
}

static void malformed_lines_give_line_numbers(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *line; /* appears as line 4, after a comment, a blank and alice */
        const char *reason;
    } cases[] = {
        {"al!ce " H_BETA, "client name"},
        {NAME64 "x " H_BETA, "client name"},
        {"b\rob " H_BETA, "client name"},
        {"bob", "missing sha256"},
        {"bob " HEX_ABC, "second field must be sha256:"},
        {"bob sha1:" HEX_ABC, "second field must be sha256:"},
        {"bob SHA256:" HEX_ABC, "second field must be sha256:"},
        {"bob sha256:" HEX_ABC "0", "second field must be sha256:"},
        {"bob sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a",
         "second field must be sha256:"},
        {"bob sha256:ga7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
         "second field must be sha256:"},
        {"bob sha256:", "second field must be sha256:"},
        {"bob " H_EMPTY, "empty token"},
        {"bob " H_ALPHA, "same hash as line 3"},
        {"bob " H_BETA " foo=1", "field 3 is not an option"},
        {"bob " H_BETA " max_sessions", "field 3 is not an option"},
        {"bob " H_BETA " priority=low MAX_SESSIONS=2", "field 4 is not an option"},
        {"bob " H_BETA " max_sessions=0", "max_sessions must be"},
        {"bob " H_BETA " max_sessions=4097", "max_sessions must be"},
        {"bob " H_BETA " max_sessions=99999999999999999999", "max_sessions must be"},
        {"bob " H_BETA " max_sessions=", "max_sessions must be"},
        {"bob " H_BETA " max_sessions=-1", "max_sessions must be"},
        {"bob " H_BETA " max_sessions=+5", "max_sessions must be"},
        {"bob " H_BETA " max_sessions=2x", "max_sessions must be"},
        {"bob " H_BETA " priority=urgent", "priority must be"},
        {"bob " H_BETA " priority=HIGH", "priority must be"},
        {"bob " H_BETA " priority=", "priority must be"},
        {"bob " H_BETA " max_sessions=1 max_sessions=2", "max_sessions given twice"},
        {"bob " H_BETA " priority=low priority=low", "priority given twice"},
        {"bob " H_BETA " max_sessions=1 priority=low extra", "too many fields"},
        {"bob " H_BETA " extra", "field 3 is not an option"},
        {"bob " H_BETA " \r priority=low", "field 3 is not an option"}, /* a stray CR */
    };
    char text[2048];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = snprintf(text, sizeof text, "# clients\n\nalice %s\n%s\nzed %s\n", H_ALPHA,
                         cases[i].line, H_ABC);
        expect_parse_error(f->path, text, (size_t)n, 4, cases[i].reason);
    }
    /* A bad first line, and a bad last line without its newline. */
    expect_parse_error(f->path, "bob", 3, 1, "missing sha256");
    const char *last = "alice " H_ALPHA "\nbob " H_BETA " priority=top";
    expect_parse_error(f->path, last, strlen(last), 2, "priority must be");
}

static void errors_never_quote_the_field(void **state)
{
    fixture *f = *state;
    /* An operator who pastes a token where a hash or an option belongs must
     * not see it echoed into a log. */
    const char *text = "alice ic_0123456789abcdefSECRET\n";
    expect_parse_error(f->path, text, strlen(text), 1, "second field");
    char err[512];
    ic_auth *a;
    assert_int_equal(ic_auth_load(f->path, &a, err, sizeof err), IC_ERR_PARSE);
    assert_null(strstr(err, "SECRET"));
    text = "alice " H_ALPHA " ic_0123456789abcdefSECRET\n";
    expect_parse_error(f->path, text, strlen(text), 1, "field 3");
    assert_int_equal(ic_auth_load(f->path, &a, err, sizeof err), IC_ERR_PARSE);
    assert_null(strstr(err, "SECRET"));
    assert_null(strstr(err, "a336d9b1"));
}

static void nul_byte_is_an_error(void **state)
{
    fixture *f = *state;
    static const char text[] = "alice " H_ALPHA "\nbob " H_BETA "\0 priority=low\n";
    expect_parse_error(f->path, text, sizeof text - 1, 2, "NUL byte");
}

static void line_length_limit_is_1024_bytes(void **state)
{
    fixture *f = *state;
    char text[2100];
    /* Exactly 1024 bytes before the newline: accepted (trailing blanks). */
    int n = snprintf(text, sizeof text, "# c\nbob %s", H_BETA);
    int line_start = 4;
    memset(text + n, ' ', (size_t)(line_start + 1024 - n));
    n = line_start + 1024;
    text[n++] = '\n';
    write_bytes(f->path, text, (size_t)n);
    ic_auth *a = load_ok(f->path);
    assert_int_equal(ic_auth_count(a), 1);
    ic_auth_destroy(a);
    /* 1025 bytes: line 2 is too long. */
    n = snprintf(text, sizeof text, "# c\nbob %s", H_BETA);
    memset(text + n, ' ', (size_t)(line_start + 1025 - n));
    n = line_start + 1025;
    text[n++] = '\n';
    expect_parse_error(f->path, text, (size_t)n, 2, "line longer than 1024 bytes");
    /* 1024 bytes plus a CR: too long as well (the limit counts the CR). */
    n = snprintf(text, sizeof text, "bob %s", H_BETA);
    memset(text + n, ' ', (size_t)(1024 - n));
    memcpy(text + 1024, "\r\n", 2);
    expect_parse_error(f->path, text, 1026, 1, "line longer than 1024 bytes");
}

static void empty_files_are_errors(void **state)
{
    fixture *f = *state;
    const char *texts[] = {"", "\n\n", "# only a comment\n   \n# another\n"};
    char want[256];
    snprintf(want, sizeof want, "%s: no clients in tokens file", f->path);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        write_text(f->path, texts[i]);
        ic_auth *a = (ic_auth *)1;
        char err[256] = "";
        assert_int_equal(ic_auth_load(f->path, &a, err, sizeof err), IC_ERR_PARSE);
        assert_null(a);
        assert_string_equal(err, want);
    }
}

static void missing_file_and_directory_are_io_errors(void **state)
{
    fixture *f = *state;
    ic_auth *a = (ic_auth *)1;
    char err[256] = "";
    assert_int_equal(ic_auth_load(f->path, &a, err, sizeof err), IC_ERR_IO);
    assert_null(a);
    assert_non_null(strstr(err, f->path));
    assert_non_null(strstr(err, "No such file"));
    assert_int_equal(ic_auth_load(f->dir, &a, err, sizeof err), IC_ERR_IO);
    assert_non_null(strstr(err, "not a regular file"));
    /* err may be left out. */
    assert_int_equal(ic_auth_load(f->path, &a, NULL, 0), IC_ERR_IO);
    ic_auth_destroy(NULL);
    assert_int_equal(ic_auth_count(NULL), 0);
}

/* ---- checking --------------------------------------------------------- */

static void check_rejects_wrong_empty_and_prefix_tokens(void **state)
{
    fixture *f = *state;
    write_text(f->path, "alice " H_ABC "\nbob " H_BETA "\n");
    ic_auth *a = load_ok(f->path);
    ic_client_cfg cfg;
    const char *bad[] = {"", "ab", "a", "abcd", "abc ", " abc", "ABC", "beta-toke", "beta-token\n",
                         "alpha-token", H_ABC, HEX_ABC};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (ic_auth_check(a, bad[i], &cfg) != IC_ERR_AUTH)
            fail_msg("token %zu was accepted", i);
    }
    assert_int_equal(ic_auth_check(a, NULL, &cfg), IC_ERR_AUTH);
    assert_int_equal(ic_auth_check(NULL, "abc", &cfg), IC_ERR_AUTH);
    assert_client(a, "abc", "alice", 0, IC_PRIORITY_NORMAL);
    assert_int_equal(ic_auth_check(a, "beta-token", NULL), 0); /* out may be left out */
    ic_auth_destroy(a);
}

/* ---- creating tokens -------------------------------------------------- */

static void assert_token_shape(const char *tok)
{
    assert_int_equal(strlen(tok), 67);
    assert_memory_equal(tok, "ic_", 3);
    for (int i = 3; i < 67; i++) {
        if (!((tok[i] >= '0' && tok[i] <= '9') || (tok[i] >= 'a' && tok[i] <= 'f')))
            fail_msg("token character %d is not lowercase hex", i);
    }
}

static void add_token_creates_file_0600(void **state)
{
    fixture *f = *state;
    char tok[80], err[256] = "unset";
    assert_int_equal(ic_auth_add_token(f->path, "alice", 2, IC_PRIORITY_HIGH, tok, sizeof tok, err,
                                       sizeof err),
                     0);
    assert_string_equal(err, "");
    assert_token_shape(tok);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    /* One line: NAME sha256:<64 lowercase hex> options, never the token. */
    char text[512];
    size_t n = read_text(f->path, text, sizeof text);
    assert_int_equal(n, strlen("alice sha256:") + 64 + strlen(" max_sessions=2 priority=high\n"));
    assert_memory_equal(text, "alice sha256:", 13);
    assert_string_equal(text + 13 + 64, " max_sessions=2 priority=high\n");
    for (int i = 13; i < 13 + 64; i++)
        assert_true((text[i] >= '0' && text[i] <= '9') || (text[i] >= 'a' && text[i] <= 'f'));
    assert_null(strstr(text, tok + 3));
    ic_auth *a = load_ok(f->path);
    assert_int_equal(ic_auth_count(a), 1);
    assert_client(a, tok, "alice", 2, IC_PRIORITY_HIGH);
    tok[66] = tok[66] == '0' ? '1' : '0';
    assert_int_equal(ic_auth_check(a, tok, NULL), IC_ERR_AUTH);
    tok[66] = '\0';
    assert_int_equal(ic_auth_check(a, tok, NULL), IC_ERR_AUTH);
    ic_auth_destroy(a);
}

static void add_token_appends_and_adds_missing_newline(void **state)
{
    fixture *f = *state;
    write_text(f->path, "# mine\nalice " H_ALPHA); /* no final newline */
    assert_int_equal(chmod(f->path, 0600), 0);
    char t1[80], t2[80], err[256];
    assert_int_equal(
        ic_auth_add_token(f->path, "bob", 0, IC_PRIORITY_NORMAL, t1, sizeof t1, err, sizeof err), 0);
    assert_int_equal(
        ic_auth_add_token(f->path, "bob", 0, IC_PRIORITY_LOW, t2, sizeof t2, err, sizeof err), 0);
    assert_string_not_equal(t1, t2);
    char text[1024];
    read_text(f->path, text, sizeof text);
    static const char head[] = "# mine\nalice " H_ALPHA "\nbob sha256:";
    assert_memory_equal(text, head, sizeof head - 1);
    assert_string_equal(text + strlen(text) - strlen(" priority=low\n"), " priority=low\n");
    assert_null(strstr(text, "\n\n"));
    ic_auth *a = load_ok(f->path);
    assert_int_equal(ic_auth_count(a), 3);
    assert_client(a, "alpha-token", "alice", 0, IC_PRIORITY_NORMAL);
    assert_client(a, t1, "bob", 0, IC_PRIORITY_NORMAL);
    assert_client(a, t2, "bob", 0, IC_PRIORITY_LOW);
    ic_auth_destroy(a);
}

static void add_token_keeps_appending_to_a_loose_file(void **state)
{
    fixture *f = *state;
    write_text(f->path, "alice " H_ALPHA "\n");
    assert_int_equal(chmod(f->path, 0644), 0);
    char tok[80], err[256];
    /* Warns on stderr, appends anyway, and leaves the mode to the operator. */
    assert_int_equal(
        ic_auth_add_token(f->path, "bob", 0, IC_PRIORITY_NORMAL, tok, sizeof tok, err, sizeof err),
        0);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
    ic_auth *a = load_ok(f->path);
    assert_int_equal(ic_auth_count(a), 2);
    assert_client(a, tok, "bob", 0, IC_PRIORITY_NORMAL);
    ic_auth_destroy(a);
}

static void add_token_rejects_bad_arguments(void **state)
{
    fixture *f = *state;
    char tok[80], err[256];
    const char *names[] = {"", "a b", "a\nb", "al!ce", NAME64 "x", NULL};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        err[0] = '\0';
        assert_int_equal(ic_auth_add_token(f->path, names[i], 0, IC_PRIORITY_NORMAL, tok,
                                           sizeof tok, err, sizeof err),
                         IC_ERR_INVAL);
        assert_non_null(strstr(err, "client name"));
    }
    assert_int_equal(
        ic_auth_add_token(f->path, "bob", -1, IC_PRIORITY_NORMAL, tok, sizeof tok, err, sizeof err),
        IC_ERR_INVAL);
    assert_int_equal(ic_auth_add_token(f->path, "bob", 4097, IC_PRIORITY_NORMAL, tok, sizeof tok,
                                       err, sizeof err),
                     IC_ERR_INVAL);
    assert_non_null(strstr(err, "4096"));
    assert_int_equal(ic_auth_add_token(f->path, "bob", 0, (enum ic_priority)7, tok, sizeof tok, err,
                                       sizeof err),
                     IC_ERR_INVAL);
    assert_int_equal(
        ic_auth_add_token(f->path, "bob", 0, IC_PRIORITY_NORMAL, tok, 67, err, sizeof err),
        IC_ERR_INVAL);
    assert_int_equal(
        ic_auth_add_token("", "bob", 0, IC_PRIORITY_NORMAL, tok, sizeof tok, err, sizeof err),
        IC_ERR_INVAL);
    /* Nothing was created. */
    struct stat st;
    assert_int_equal(stat(f->path, &st), -1);
    assert_int_equal(errno, ENOENT);
    /* The 64-character name and the 4096 limit are fine. */
    assert_int_equal(ic_auth_add_token(f->path, NAME64, 4096, IC_PRIORITY_LOW, tok, 68, NULL, 0),
                     0);
    ic_auth *a = load_ok(f->path);
    assert_client(a, tok, NAME64, 4096, IC_PRIORITY_LOW);
    ic_auth_destroy(a);
}

static void add_token_refuses_what_is_not_a_regular_file(void **state)
{
    fixture *f = *state;
    char tok[80], err[256], path[160];
    assert_int_equal(
        ic_auth_add_token(f->dir, "bob", 0, IC_PRIORITY_NORMAL, tok, sizeof tok, err, sizeof err),
        IC_ERR_IO);
    snprintf(path, sizeof path, "%s/fifo", f->dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(
        ic_auth_add_token(path, "bob", 0, IC_PRIORITY_NORMAL, tok, sizeof tok, err, sizeof err),
        IC_ERR_IO);
    assert_non_null(strstr(err, "not a regular file"));
    snprintf(path, sizeof path, "%s/no/such/dir/tokens", f->dir);
    assert_int_equal(
        ic_auth_add_token(path, "bob", 0, IC_PRIORITY_NORMAL, tok, sizeof tok, err, sizeof err),
        IC_ERR_IO);
    assert_non_null(strstr(err, path));
}

/* Many entries: the masked index picks the right one, first to last. */
static void check_finds_every_entry_of_many(void **state)
{
    fixture *f = *state;
    enum { N = 40 };
    char toks[N][80], name[16], err[256];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "c%d", i);
        if (ic_auth_add_token(f->path, name, i + 1, (enum ic_priority)(i % 3), toks[i],
                              sizeof toks[i], err, sizeof err) != 0)
            fail_msg("add %d: %s", i, err);
    }
    ic_auth *a = load_ok(f->path);
    assert_int_equal(ic_auth_count(a), N);
    for (int i = N - 1; i >= 0; i--) {
        snprintf(name, sizeof name, "c%d", i);
        assert_client(a, toks[i], name, i + 1, (enum ic_priority)(i % 3));
    }
    ic_auth_destroy(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(loads_comments_blanks_and_options, setup, teardown),
        cmocka_unit_test_setup_teardown(loads_crlf_line_endings, setup, teardown),
        cmocka_unit_test_setup_teardown(admin_option, setup, teardown),
        cmocka_unit_test_setup_teardown(one_name_may_have_two_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(malformed_lines_give_line_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(errors_never_quote_the_field, setup, teardown),
        cmocka_unit_test_setup_teardown(nul_byte_is_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(line_length_limit_is_1024_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(empty_files_are_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(missing_file_and_directory_are_io_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(check_rejects_wrong_empty_and_prefix_tokens, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(add_token_creates_file_0600, setup, teardown),
        cmocka_unit_test_setup_teardown(add_token_appends_and_adds_missing_newline, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(add_token_keeps_appending_to_a_loose_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(add_token_rejects_bad_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(add_token_refuses_what_is_not_a_regular_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(check_finds_every_entry_of_many, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
