/* config.h - the --config file: INI-style `key = value` lines whose keys
 * are the command's long option names (`max-sessions = 8`), read with
 * libinih. The only includer of ini.h.
 *
 * Main thread, at start-up. The caller gives the meaning of each key
 * through apply; this module only reads lines and reports where a line is
 * wrong.
 */
#ifndef IC_CONFIG_H
#define IC_CONFIG_H

#include <stddef.h>

/* Applies one key. Returns 0, or a negative ic_err with a reason in why
 * (e.g. "unknown key 'x'" or "invalid value 'y' for 'max-sessions'"). */
typedef int (*ic_config_apply_fn)(void *ud, const char *key, const char *value, char *why,
                                  size_t whylen);

/* Reads path and calls apply for each key in file order, stopping at the
 * first error. Returns 0, IC_ERR_IO (cannot be read) or IC_ERR_PARSE; err
 * then holds "PATH:LINE: reason". Sections ([name]) are refused: there is
 * one flat set of keys. */
int ic_config_load(const char *path, ic_config_apply_fn apply, void *ud, char *err,
                   size_t errlen);

/* As ic_config_load for a file of [sections] (models.ini): apply gets each
 * key with its section's name ("" before the first section). */
typedef int (*ic_config_section_fn)(void *ud, const char *section, const char *key,
                                    const char *value, char *why, size_t whylen);
int ic_config_load_sections(const char *path, ic_config_section_fn apply, void *ud, char *err,
                            size_t errlen);

#endif
