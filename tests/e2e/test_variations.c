// The variations layer over every circumstance of a business with 3 regions,
// 3 channels and 2 products, as a client sees it.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

static daemon_t d;

static void
setup(void)
{
	memset(&d, 0, sizeof(d));
	d_start(&d, getenv("CHOREO_E2E_RULES"), false);
}

static void
teardown(void)
{
	d_stop(&d);
	d_cleanup(&d);
}

TestSuite(variations, .init = setup, .fini = teardown);

Test(variations, every_circumstance_resolves_as_documented)
{
	const char *regions[]  = { "US", "EU", "APAC" };
	const char *channels[] = { "web", "app", "email" };
	const char *products[] = { "basic", "pro" };
	for (int r = 0; r < 3; r++) {
		for (int c = 0; c < 3; c++) {
			for (int p = 0; p < 2; p++) {
				const char *R = regions[r], *C = channels[c], *P = products[p];
				char        q[512];
				reply_t     rep;
				snprintf(q, sizeof(q),
				    "{\"op\":\"decide\",\"business\":\"retail\",\"customer\":\"%s-%s-%s\","
				    "\"region\":\"%s\",\"channel\":\"%s\",\"product\":\"%s\",\"record\":false,\"limit\":5}",
				    R, C, P, R, C, P);
				call_json(&d, q, &rep);
				cr_assert(ok(&rep), "%s", code(&rep));
				// expected, from the rules' layer
				int price = strcmp(R, "EU") == 0 ? 90
				    : strcmp(R, "APAC") == 0     ? (strcmp(P, "pro") == 0 ? 75 : 80)
				                                 : 100;
				const char *cur = strcmp(R, "EU") == 0 ? "EUR"
				    : strcmp(R, "APAC") == 0         ? "JPY"
				                                     : "USD";
				int value = strcmp(C, "app") == 0 ? 20 : 10;
				const char *title = strcmp(C, "email") == 0 ? "Offer by mail"
				    : (strcmp(R, "EU") == 0 && strcmp(C, "app") == 0)
				        ? "EU app offer"
				        : "Offer";
				const char *tag = strcmp(P, "pro") == 0 ? "pro" : "base";
				bool only = strcmp(R, "US") == 0 && strcmp(C, "web") == 0 &&
				    strcmp(P, "basic") == 0;
				int k = only ? 1 : 0; // the special action ranks first
				char path[64];
				if (only) {
					cr_assert_str_eq(str_at(&rep, "actions.0.name"),
					    "us_web_basic_only");
				}
				snprintf(path, sizeof(path), "actions.%d.name", k);
				cr_assert_str_eq(str_at(&rep, path), "offer", "%s/%s/%s", R, C, P);
				snprintf(path, sizeof(path), "actions.%d.payload.price", k);
				cr_assert_eq(int_at(&rep, path), price, "%s/%s/%s price", R, C, P);
				snprintf(path, sizeof(path), "actions.%d.payload.currency", k);
				cr_assert_str_eq(str_at(&rep, path), cur);
				snprintf(path, sizeof(path), "actions.%d.value", k);
				cr_assert_eq(int_at(&rep, path), value, "%s/%s/%s value", R, C, P);
				snprintf(path, sizeof(path), "actions.%d.payload.title", k);
				cr_assert_str_eq(str_at(&rep, path), title, "%s/%s/%s title", R, C, P);
				snprintf(path, sizeof(path), "actions.%d.payload.tags.0", k);
				cr_assert_str_eq(str_at(&rep, path), tag, "%s/%s/%s tags", R, C, P);
				snprintf(path, sizeof(path), "actions.%d.payload.tags.1", k);
				cr_assert_null(at(&rep.up.data, path), "lists are replaced");
				snprintf(path, sizeof(path), "actions.%d.name", only ? 3 : 2);
				cr_assert_null(at(&rep.up.data, path));
				reply_free(&rep);
			}
		}
	}
}
