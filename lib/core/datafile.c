#include "core/datafile.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

#ifndef CLIP_DATADIR
#define CLIP_DATADIR "/usr/local/share/clip-tools"
#endif

/* dir/name when it is a regular file (malloc'd), else NULL; appends dir to tried */
static char *try_dir(const char *dir, const char *name, char *tried, size_t cap)
{
    char *path = xmalloc(strlen(dir) + strlen(name) + 2);
    sprintf(path, "%s/%s", dir, name);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return path;
    free(path);
    size_t used = strlen(tried);
    snprintf(tried + used, cap - used, "%s%s", used ? ", " : "", dir);
    return NULL;
}

char *clip_data_path(const char *name)
{
    char tried[3 * PATH_MAX + 8] = "";
    const char *env = getenv("CLIP_TOOLS_DATA");
    if (env && *env) {
        char *p = try_dir(env, name, tried, sizeof tried);
        if (!p) clip_set_error("%s: not in $CLIP_TOOLS_DATA (%s)", name, env);
        return p;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash && (size_t)(slash - exe) + sizeof "/../share/clip-tools" < sizeof exe) {
            strcpy(slash, "/../share/clip-tools");
            char *p = try_dir(exe, name, tried, sizeof tried);
            if (p) return p;
        }
    }
    char *p = try_dir(CLIP_DATADIR, name, tried, sizeof tried);
    if (!p)
        clip_set_error("%s: shipped data file not found (looked in %s); reinstall with "
                       "'make install', set CLIP_TOOLS_DATA, or give the file's path",
                       name, tried);
    return p;
}
