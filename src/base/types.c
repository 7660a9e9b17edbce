/* types.c - the names of the shared small types (types.h). Pure. */
#include "types.h"
#include "err.h"

#include <string.h>

static const char *const priority_names[] = {"low", "normal", "high"}; /* enum order */

const char *ic_priority_name(enum ic_priority p)
{
    return (unsigned)p < 3 ? priority_names[p] : NULL;
}

int ic_priority_parse(const char *s, enum ic_priority *out)
{
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, priority_names[i]) == 0) {
            *out = (enum ic_priority)i;
            return 0;
        }
    }
    return IC_ERR_INVAL;
}
