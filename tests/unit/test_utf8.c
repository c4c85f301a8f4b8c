// UTF-8 (core/utf8.h): the checker agrees with a decoder written the other
// way round (decode the code point, then ask whether it was encoded the
// one allowed way) on every sequence of up to three bytes and a sweep of
// four-byte ones; the escaper writes valid text and never cuts a
// character or an escape.
#include <criterion/criterion.h>
#include <string.h>

#include "core/utf8.h"

// reference: whether p[0..n) is one well-formed character.
static bool
reference(const unsigned char *p, size_t n)
{
	uint32_t cp;
	size_t   len;
	if (p[0] < 0x80) {
		cp = p[0], len = 1;
	} else if ((p[0] & 0xe0) == 0xc0) {
		cp = p[0] & 0x1f, len = 2;
	} else if ((p[0] & 0xf0) == 0xe0) {
		cp = p[0] & 0x0f, len = 3;
	} else if ((p[0] & 0xf8) == 0xf0) {
		cp = p[0] & 0x07, len = 4;
	} else {
		return (false);
	}
	if (len != n) {
		return (false);
	}
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80) {
			return (false);
		}
		cp = cp << 6 | (p[i] & 0x3f);
	}
	size_t shortest = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
	return (shortest == n && cp <= 0x10ffff &&
	    !(cp >= 0xd800 && cp <= 0xdfff));
}

Test(utf8, agrees_with_a_decoder_on_every_short_sequence)
{
	unsigned char b[4];
	for (uint32_t x = 0; x < 0x100; x++) {
		b[0] = (unsigned char) x;
		cr_assert_eq(ch_utf8_valid(b, 1), reference(b, 1), "%02x", x);
	}
	for (uint32_t x = 0; x < 0x10000; x++) {
		b[0] = (unsigned char) (x >> 8), b[1] = (unsigned char) x;
		// two characters of one byte each are valid too
		bool want = reference(b, 2) ||
		    (reference(b, 1) && reference(b + 1, 1));
		cr_assert_eq(ch_utf8_valid(b, 2), want, "%04x", x);
	}
	for (uint32_t x = 0xe00000; x < 0xf00000; x++) {
		b[0] = (unsigned char) (x >> 16), b[1] = (unsigned char) (x >> 8);
		b[2] = (unsigned char) x;
		if (ch_utf8_valid(b, 3) != reference(b, 3)) {
			cr_assert_fail("%06x", x);
		}
	}
	// four bytes: every lead byte and second byte, continuations at
	// their edges
	const unsigned char tails[] = { 0x00, 0x7f, 0x80, 0xbf, 0xc0, 0xff };
	for (uint32_t l = 0xf0; l < 0x100; l++) {
		for (uint32_t s = 0; s < 0x100; s++) {
			for (size_t t = 0; t < sizeof(tails); t++) {
				b[0] = (unsigned char) l, b[1] = (unsigned char) s;
				b[2] = tails[t], b[3] = 0x80;
				cr_assert_eq(ch_utf8_valid(b, 4), reference(b, 4),
				    "%02x %02x %02x 80", l, s, tails[t]);
			}
		}
	}
}

Test(utf8, the_edges_of_each_length)
{
	const char *ok[] = { "\x7f", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80",
		"\xed\x9f\xbf", "\xee\x80\x80", "\xef\xbf\xbf",
		"\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf" };
	const char *bad[] = { "\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x9f\xbf",
		"\xed\xa0\x80", "\xed\xbf\xbf", "\xf0\x8f\xbf\xbf",
		"\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff", "\xc3",
		"\xe2\x82", "\xf0\x9f\x98" };
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		cr_assert(ch_utf8_valid(ok[i], strlen(ok[i])), "ok[%zu]", i);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_not(ch_utf8_valid(bad[i], strlen(bad[i])), "bad[%zu]",
		    i);
	}
}

Test(utf8, the_prefix_stops_where_the_text_goes_wrong)
{
	// across the eight-byte ASCII steps, and around a multibyte é
	char s[48];
	for (size_t at = 0; at < sizeof(s); at++) {
		memset(s, 'a', sizeof(s));
		memcpy(s + 20, "\xc3\xa9", 2);
		s[at]       = (char) 0xff;
		size_t want = at == 21 ? 20 : at; // é itself broken
		cr_assert_eq(ch_utf8_prefix(s, sizeof(s)), want, "at %zu", at);
	}
	cr_assert_eq(ch_utf8_prefix("", 0), 0);
	cr_assert_eq(ch_utf8_prefix("abcdefghijklmnop", 16), 16);
}

Test(utf8, text_is_valid_utf8_without_nul)
{
	cr_assert(ch_utf8_text("Zoë ✓ 顧客", strlen("Zoë ✓ 顧客")));
	cr_assert_not(ch_utf8_text("victim\0zz", 9));
	cr_assert(ch_utf8_valid("victim\0zz", 9), "NUL is valid UTF-8");
	cr_assert_not(ch_utf8_text("a\xff", 2));
}

Test(utf8, escaping_writes_valid_text)
{
	char   out[64];
	size_t n = ch_utf8_escape(out, sizeof(out), "a\xff\xc3\xa9\xc3", 5,
	    false);
	cr_assert_str_eq(out, "a\\xffé\\xc3");
	cr_assert_eq(n, strlen(out));
	cr_assert(ch_utf8_valid(out, n));
	// control bytes only when asked
	ch_utf8_escape(out, sizeof(out), "a\nb\0c\x7f", 6, true);
	cr_assert_str_eq(out, "a\\x0ab\\x00c\\x7f");
	n = ch_utf8_escape(out, sizeof(out), "a\nb", 3, false);
	cr_assert_eq(n, 3);
	cr_assert_eq(memcmp(out, "a\nb", 4), 0);
}

Test(utf8, a_short_buffer_cuts_between_characters_and_escapes)
{
	char out[6];
	// "é" (2) + "\xff" (4): the escape does not fit after é + é
	size_t n = ch_utf8_escape(out, sizeof(out), "\xc3\xa9\xc3\xa9\xff", 5,
	    false);
	cr_assert_eq(n, 8, "the whole length, as snprintf");
	cr_assert_str_eq(out, "éé");
	n = ch_utf8_escape(out, 3, "\xff", 1, false);
	cr_assert_eq(n, 4);
	cr_assert_str_eq(out, "");
	cr_assert_eq(ch_utf8_escape(NULL, 0, "ab\xff", 3, false), 6);
}
