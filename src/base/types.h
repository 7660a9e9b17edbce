/* types.h - small types that several layers share: a request's priority.
 *
 * Pure; any thread. The names are those the protocol, the tokens file and
 * the command line spell (types.c).
 */
#ifndef IC_TYPES_H
#define IC_TYPES_H

enum ic_priority {
    IC_PRIORITY_LOW = 0,
    IC_PRIORITY_NORMAL = 1,
    IC_PRIORITY_HIGH = 2,
};

/* "low", "normal", "high"; NULL for a value out of range. */
const char *ic_priority_name(enum ic_priority p);

/* Returns 0 and the priority, or IC_ERR_INVAL for an unknown name. */
int ic_priority_parse(const char *s, enum ic_priority *out);

#endif
