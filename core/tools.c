// choreo — the analyst's tools: `choreo test DIR` and `choreo lint DIR`.
//
// DIR is one business's folder (rules/shop) or a whole rules folder
// (rules/, every business in it).
#include "tools.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../lua/atest.h"
#include "../lua/rules.h"
#include "err.h"
#include "log.h"

typedef int (*per_business)(const char *rules_dir, const char *business,
    void *arg);

static bool
is_dir(const char *p)
{
	struct stat st;
	return (stat(p, &st) == 0 && S_ISDIR(st.st_mode));
}

// has_lua: the folder holds *.lua files itself (a business folder).
static bool
has_lua(const char *dir)
{
	DIR *d = opendir(dir);
	if (d == NULL) {
		return (false);
	}
	struct dirent *e;
	bool           yes = false;
	while (!yes && (e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		yes      = n > 4 && strcmp(e->d_name + n - 4, ".lua") == 0;
	}
	closedir(d);
	return (yes);
}

static int
cmp(const void *a, const void *b)
{
	return (strcmp(*(char *const *) a, *(char *const *) b));
}

// each calls fn for the business DIR is, or for every business in it.
static int
each(const char *dir, per_business fn, void *arg)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s", dir);
	size_t n = strlen(buf);
	while (n > 1 && buf[n - 1] == '/') {
		buf[--n] = '\0';
	}
	if (!is_dir(buf)) {
		fprintf(stderr, "choreo: %s is not a folder\n", dir);
		return (-1);
	}
	char tests[4200];
	snprintf(tests, sizeof(tests), "%s/tests", buf);
	if (has_lua(buf) || is_dir(tests)) {
		char  copy1[4096], copy2[4096];
		snprintf(copy1, sizeof(copy1), "%s", buf);
		snprintf(copy2, sizeof(copy2), "%s", buf);
		return (fn(dirname(copy1), basename(copy2), arg));
	}
	DIR *d = opendir(buf);
	if (d == NULL) {
		fprintf(stderr, "choreo: cannot open %s: %s\n", dir,
		    strerror(errno));
		return (-1);
	}
	char         **names = NULL;
	int            count = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char p[4400];
		if (e->d_name[0] == '.') {
			continue;
		}
		snprintf(p, sizeof(p), "%s/%s", buf, e->d_name);
		if (!is_dir(p)) {
			continue;
		}
		char **nn = realloc(names, sizeof(char *) * (size_t) (count + 1));
		if (nn == NULL) {
			break;
		}
		names          = nn;
		names[count++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(names, (size_t) count, sizeof(char *), cmp);
	int rv = 0;
	for (int i = 0; i < count; i++) {
		if (fn(buf, names[i], arg) != 0) {
			rv = -1;
		}
		free(names[i]);
	}
	free(names);
	return (rv);
}

/*
** {======================================================
** choreo test
** =======================================================
*/

typedef struct {
	int passed, failed;
} totals;

static int
test_one(const char *rules_dir, const char *business, void *arg)
{
	totals *t = arg;
	int     p, f;
	// the rules must load before their tests can run
	ch_rules     *r;
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	if (ch_rules_load_one(&r, rules_dir, business, &ro) != CH_OK) {
		return (-1);
	}
	ch_str name = { business, (uint32_t) strlen(business) };
	if (ch_rules_find(r, name) == NULL) {
		printf("FAIL %s: the rules do not load: %s\n", business,
		    ch_rules_error(r, name));
		t->failed++;
		ch_rules_free(r);
		return (-1);
	}
	ch_rules_free(r);
	if (ch_atest_run(rules_dir, business, stdout, &p, &f, NULL, 0) !=
	    CH_OK) {
		t->failed += f > 0 ? f : 1;
		return (-1);
	}
	t->passed += p;
	t->failed += f;
	return (f > 0 ? -1 : 0);
}

int
ch_test_main(int argc, char **argv)
{
	if (argc != 2 || strcmp(argv[1], "--help") == 0) {
		FILE *f = argc == 2 ? stdout : stderr;
		fprintf(f,
		    "usage: choreo test DIR\n"
		    "\n"
		    "Runs the analyst tests of one business (DIR = rules/shop) or\n"
		    "of every business in a rules folder (DIR = rules): the files\n"
		    "DIR/tests/*.lua, each test on a fresh temporary store with a\n"
		    "virtual clock. Prints each test as ok or FAIL (with file:line\n"
		    "and both values) and ends with 'N passed, N failed'. Exit\n"
		    "status 1 when any test failed.\n");
		return (argc == 2 ? 0 : 2);
	}
	ch_log_set_level(CH_LOG_OFF); // failures are printed as test results
	totals t = { 0, 0 };
	int    rv = each(argv[1], test_one, &t);
	printf("%d passed, %d failed\n", t.passed, t.failed);
	if (rv != 0 && t.failed == 0) {
		return (2);
	}
	return (t.failed > 0 ? 1 : 0);
}

/* }====================================================== */

/*
** {======================================================
** choreo lint
** =======================================================
*/

typedef struct {
	int  errors, warnings;
	bool luacheck;
} lint_totals;

static int
lint_one(const char *rules_dir, const char *business, void *arg)
{
	lint_totals  *t = arg;
	ch_rules     *r;
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	if (ch_rules_load_one(&r, rules_dir, business, &ro) != CH_OK) {
		return (-1);
	}
	ch_str name = { business, (uint32_t) strlen(business) };
	if (ch_rules_find(r, name) == NULL) {
		// the load error already reads file:line: message
		printf("%s\n", ch_rules_error(r, name));
		t->errors++;
	}
	ch_rules_free(r);
	if (t->luacheck) {
		// undefined globals and unused locals, as luacheck sees them
		char cmd[8400];
		snprintf(cmd, sizeof(cmd),
		    "luacheck --std lua54 --no-color --codes --formatter plain "
		    "--globals params journey case action variation levers "
		    "contact_policy max_per_group arbitrate on token sandbox test "
		    "--no-max-line-length --no-unused-args -- '%s/%s' 2>/dev/null",
		    rules_dir, business);
		FILE *p = popen(cmd, "r");
		char  line[1024];
		while (p != NULL && fgets(line, sizeof(line), p) != NULL) {
			fputs(line, stdout);
			t->warnings++;
		}
		if (p != NULL) {
			pclose(p);
		}
	}
	return (0);
}

int
ch_lint_main(int argc, char **argv)
{
	if (argc != 2 || strcmp(argv[1], "--help") == 0) {
		FILE *f = argc == 2 ? stdout : stderr;
		fprintf(f,
		    "usage: choreo lint DIR\n"
		    "\n"
		    "Loads the rules of one business (DIR = rules/shop) or of every\n"
		    "business in a rules folder, runs the declaration checks without\n"
		    "serving, and prints each problem as 'file:line: message'. With\n"
		    "luacheck installed (Debian's lua-check) it also warns about\n"
		    "undefined globals and unused locals. Exit status 1 on errors.\n");
		return (argc == 2 ? 0 : 2);
	}
	ch_log_set_level(CH_LOG_OFF); // the errors are this command's output
	lint_totals t = { 0, 0, system("command -v luacheck >/dev/null "
	                              "2>&1") == 0 };
	if (each(argv[1], lint_one, &t) != 0 && t.errors == 0) {
		return (2);
	}
	printf("%d error(s), %d warning(s)\n", t.errors, t.warnings);
	return (t.errors > 0 ? 1 : 0);
}

/* }====================================================== */
