/* test_gpu.c - the hardware monitor against the fake NVML
 * (tests/fakenvml, found through $IC_FAKE_NVML): scripted readings, the
 * sampling interval, every way of having no NVML, and the host readings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "gpu.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char dir[256];          /* mkdtemp dir of this run */
static char script[300];       /* $IC_FAKE_NVML_FILE */
static char counter[300];      /* $IC_FAKE_NVML_COUNTER */
static char logfile[300];      /* stderr while a monitor is created */

static const char *fake_path(void)
{
    const char *p = getenv("IC_FAKE_NVML");
    if (!p || access(p, R_OK) != 0)
        fail_msg("IC_FAKE_NVML does not name the fake NVML library (run through ctest)");
    return p;
}

static void write_script(const char *text)
{
    FILE *f = fopen(script, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Temperature reads the fake has seen since the last reset. */
static long reads(void)
{
    long n = 0;
    FILE *f = fopen(counter, "r");
    if (f) {
        if (fscanf(f, "%ld", &n) != 1)
            n = -1;
        fclose(f);
    }
    return n;
}

static const char *two_gpus =
    "# two GPUs\n"
    "count 2\n"
    "0.name NVIDIA GeForce GTX 1060 3GB\n"
    "0.temperature 65\n"
    "0.utilization 30\n"
    "0.memory_total 3221225472\n"
    "0.memory_used 1073741824\n"
    "0.power 80.5\n"
    "1.name NVIDIA H200\n"
    "1.temperature 71 # hotter\n"
    "1.utilization 99\n"
    "1.memory_total 150000000000\n"
    "1.memory_used 12345\n"
    "1.power 650\n";

static ic_gpu_monitor *create_with(const char *path, double interval_ms)
{
    ic_gpu_monitor_opts o = ic_gpu_monitor_opts_default();
    o.nvml_path = path;
    o.min_interval_ms = interval_ms;
    o.log_info = false;
    ic_gpu_monitor *m = NULL;
    assert_int_equal(ic_gpu_monitor_create(&o, &m), 0);
    assert_non_null(m);
    return m;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ic-test-gpu-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(script, sizeof script, "%s/nvml.txt", dir);
    snprintf(counter, sizeof counter, "%s/reads", dir);
    snprintf(logfile, sizeof logfile, "%s/log", dir);
    setenv("IC_FAKE_NVML_FILE", script, 1);
    setenv("IC_FAKE_NVML_COUNTER", counter, 1);
    unsetenv("IC_NVML_LIBRARY");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(script);
    unlink(counter);
    unlink(logfile);
    return rmdir(dir);
}

/* Each test starts from the two-GPU script and a zero read count. */
static int reset(void **state)
{
    (void)state;
    write_script(two_gpus);
    unlink(counter);
    return 0;
}

static void scripted_readings(void **state)
{
    (void)state;
    ic_gpu_monitor *m = create_with(fake_path(), 1000);
    assert_true(ic_gpu_monitor_has_nvml(m));
    assert_int_equal(ic_gpu_monitor_n_gpus(m), 2);
    ic_hw_sample s;
    ic_gpu_monitor_sample(m, &s);
    assert_int_equal(s.n_gpus, 2);
    assert_int_equal(s.gpus[0].index, 0);
    assert_string_equal(s.gpus[0].name, "NVIDIA GeForce GTX 1060 3GB");
    assert_true(s.gpus[0].temperature_c == 65);
    assert_true(s.gpus[0].utilization_pct == 30);
    assert_true(s.gpus[0].memory_total_bytes == 3221225472LL);
    assert_true(s.gpus[0].memory_used_bytes == 1073741824LL);
    assert_true(s.gpus[0].power_w == 80.5);
    assert_int_equal(s.gpus[1].index, 1);
    assert_string_equal(s.gpus[1].name, "NVIDIA H200");
    assert_true(s.gpus[1].temperature_c == 71);
    assert_true(s.gpus[1].utilization_pct == 99);
    assert_true(s.gpus[1].memory_total_bytes == 150000000000LL);
    assert_true(s.gpus[1].memory_used_bytes == 12345);
    assert_true(s.gpus[1].power_w == 650);
    assert_true(s.max_temperature_c == 71);
    ic_gpu_monitor_destroy(m);
}

static void interval_caches_and_sample_now_rereads(void **state)
{
    (void)state;
    ic_gpu_monitor *m = create_with(fake_path(), 60000);
    assert_int_equal(reads(), 0); /* create lists GPUs without sampling */
    ic_hw_sample s;
    ic_gpu_monitor_sample(m, &s);
    assert_int_equal(reads(), 2); /* one per GPU */
    assert_true(s.gpus[0].temperature_c == 65);

    write_script("count 2\n0.temperature 88\n1.temperature fail\n");
    ic_gpu_monitor_sample(m, &s); /* within the interval: the cached reading */
    assert_int_equal(reads(), 2);
    assert_true(s.gpus[0].temperature_c == 65);
    assert_true(s.max_temperature_c == 71);

    ic_gpu_monitor_sample_now(m, &s);
    assert_int_equal(reads(), 4);
    assert_true(s.gpus[0].temperature_c == 88);
    assert_true(s.gpus[1].temperature_c == -1);
    assert_true(s.max_temperature_c == 88);

    ic_gpu_monitor_sample(m, &s); /* sample_now restarted the interval */
    assert_int_equal(reads(), 4);
    assert_true(s.gpus[0].temperature_c == 88);
    ic_gpu_monitor_destroy(m);

    /* A short interval: the next sample after it reads again. */
    m = create_with(fake_path(), 5);
    ic_gpu_monitor_sample(m, &s);
    assert_int_equal(reads(), 6);
    ic_gpu_monitor_sample(m, &s);
    assert_int_equal(reads(), 6);
    nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
    ic_gpu_monitor_sample(m, &s);
    assert_int_equal(reads(), 8);
    ic_gpu_monitor_destroy(m);
}

static void assert_no_gpus(ic_gpu_monitor *m)
{
    assert_int_equal(ic_gpu_monitor_n_gpus(m), 0);
    ic_hw_sample s;
    memset(&s, 0x55, sizeof s);
    ic_gpu_monitor_sample(m, &s);
    assert_int_equal(s.n_gpus, 0);
    assert_true(s.max_temperature_c == -1);
    ic_gpu_monitor_sample_now(m, &s);
    assert_int_equal(s.n_gpus, 0);
}

static void missing_library(void **state)
{
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/no-such-libnvidia-ml.so.1", dir);
    ic_gpu_monitor *m = create_with(path, 1000);
    assert_false(ic_gpu_monitor_has_nvml(m));
    assert_no_gpus(m);
    ic_gpu_monitor_destroy(m);
}

static void failing_init(void **state)
{
    (void)state;
    write_script("count 2\nfail_init 1\n");
    ic_gpu_monitor *m = create_with(fake_path(), 1000);
    assert_false(ic_gpu_monitor_has_nvml(m));
    assert_no_gpus(m);
    ic_gpu_monitor_destroy(m);
}

static void no_gpu_and_no_script(void **state)
{
    (void)state;
    unlink(script); /* the fake then reports count 0 */
    ic_gpu_monitor *m = create_with(fake_path(), 1000);
    assert_true(ic_gpu_monitor_has_nvml(m));
    assert_no_gpus(m);
    ic_gpu_monitor_destroy(m);
}

static void failing_readings_are_per_value(void **state)
{
    (void)state;
    write_script("count 3\n"
                 "0.temperature fail\n0.utilization 10\n0.power 100\n"
                 "1.temperature 50\n1.utilization fail\n1.memory_used fail\n"
                 "2.temperature 45\n2.power fail\n2.name fail\n");
    ic_gpu_monitor *m = create_with(fake_path(), 1000);
    ic_hw_sample s;
    ic_gpu_monitor_sample(m, &s);
    assert_int_equal(s.n_gpus, 3);
    assert_true(s.gpus[0].temperature_c == -1);
    assert_true(s.gpus[0].utilization_pct == 10);
    assert_true(s.gpus[0].power_w == 100);
    assert_true(s.gpus[0].memory_total_bytes == 8589934592LL); /* the fake's default */
    assert_true(s.gpus[1].temperature_c == 50);
    assert_true(s.gpus[1].utilization_pct == -1);
    assert_true(s.gpus[1].memory_total_bytes == 0 && s.gpus[1].memory_used_bytes == 0);
    assert_true(s.gpus[1].power_w == 50);
    assert_true(s.gpus[2].power_w == -1);
    assert_string_equal(s.gpus[2].name, "GPU 2"); /* a failed name still labels it */
    assert_true(s.max_temperature_c == 50);
    ic_gpu_monitor_destroy(m);
}

static void library_without_nvml(void **state)
{
    (void)state;
    ic_gpu_monitor *m = create_with("libm.so.6", 1000);
    assert_false(ic_gpu_monitor_has_nvml(m));
    assert_no_gpus(m);
    ic_gpu_monitor_destroy(m);
    m = create_with("libc.so.6", 1000);
    assert_false(ic_gpu_monitor_has_nvml(m));
    assert_no_gpus(m);
    ic_gpu_monitor_destroy(m);
}

static void env_names_the_library(void **state)
{
    (void)state;
    setenv("IC_NVML_LIBRARY", fake_path(), 1);
    ic_gpu_monitor *m = NULL;
    assert_int_equal(ic_gpu_monitor_create(NULL, &m), 0); /* defaults: logs one line */
    unsetenv("IC_NVML_LIBRARY");
    assert_int_equal(ic_gpu_monitor_n_gpus(m), 2);
    ic_gpu_monitor_destroy(m);
    ic_gpu_monitor_destroy(NULL);
}

/* Creates a monitor for `path` with stderr sent to a file; returns what was
 * written there (static buffer). */
static const char *create_logged(const char *path, bool log_info)
{
    static char text[4096];
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int fd = open(logfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
    ic_gpu_monitor_opts o = ic_gpu_monitor_opts_default();
    o.nvml_path = path;
    o.log_info = log_info;
    ic_gpu_monitor *m = NULL;
    int rc = ic_gpu_monitor_create(&o, &m);
    ic_gpu_monitor_destroy(m);
    dup2(saved, STDERR_FILENO);
    close(saved);
    assert_int_equal(rc, 0);
    FILE *f = fopen(logfile, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    return text;
}

static int lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void one_info_line(void **state)
{
    (void)state;
    const char *t = create_logged(fake_path(), true);
    assert_int_equal(lines(t), 1);
    assert_non_null(strstr(t, "NVIDIA GeForce GTX 1060 3GB (3.0 GiB)"));
    assert_non_null(strstr(t, "NVIDIA H200"));

    t = create_logged("libm.so.6", true);
    assert_int_equal(lines(t), 1);
    assert_non_null(strstr(t, "nvmlInit_v2"));
    assert_non_null(strstr(t, "CPU"));

    write_script("fail_init 1\n");
    t = create_logged(fake_path(), true);
    assert_int_equal(lines(t), 1);
    assert_non_null(strstr(t, "Driver Not Loaded"));
    assert_non_null(strstr(t, "CPU"));

    t = create_logged("/nonexistent/libnvidia-ml.so.1", true);
    assert_int_equal(lines(t), 1);
    assert_non_null(strstr(t, "CPU"));

    t = create_logged("/nonexistent/libnvidia-ml.so.1", false);
    assert_string_equal(t, "");
}

static void host_readings(void **state)
{
    (void)state;
    ic_gpu_monitor *m = create_with("/nonexistent/libnvidia-ml.so.1", 0);
    ic_hw_sample s;
    for (int i = 0; i < 3; i++) {
        ic_gpu_monitor_sample(m, &s); /* interval 0: a fresh /proc read each time */
        assert_true(s.ram_total_bytes > 0);
        assert_true(s.ram_available_bytes > 0 && s.ram_available_bytes <= s.ram_total_bytes);
        assert_true(s.ram_used_bytes == s.ram_total_bytes - s.ram_available_bytes);
        assert_true(s.cpu_pct >= 0 && s.cpu_pct <= 100);
        for (volatile long spin = 0; spin < 2000000; spin++)
            ;
    }
    ic_gpu_monitor_destroy(m);

    ic_gpu_monitor_opts o = ic_gpu_monitor_opts_default();
    o.nvml_path = "/nonexistent/libnvidia-ml.so.1";
    o.read_host = false;
    o.log_info = false;
    assert_int_equal(ic_gpu_monitor_create(&o, &m), 0);
    ic_gpu_monitor_sample(m, &s);
    assert_true(s.ram_total_bytes == 0 && s.cpu_pct == 0);
    ic_gpu_monitor_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(scripted_readings, reset),
        cmocka_unit_test_setup(interval_caches_and_sample_now_rereads, reset),
        cmocka_unit_test_setup(missing_library, reset),
        cmocka_unit_test_setup(failing_init, reset),
        cmocka_unit_test_setup(no_gpu_and_no_script, reset),
        cmocka_unit_test_setup(failing_readings_are_per_value, reset),
        cmocka_unit_test_setup(library_without_nvml, reset),
        cmocka_unit_test_setup(env_names_the_library, reset),
        cmocka_unit_test_setup(one_info_line, reset),
        cmocka_unit_test_setup(host_readings, reset),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
