// choreo — UTF-8: checking it, and writing bytes that are not UTF-8 as
// text.
//
// Every string choreo writes on the wire must be valid UTF-8, and every
// identifier it reads must be too (docs/protocol.md): msgpack clients that
// decode strings (Python's by default) cannot read a str that is not, so
// the caller would not even learn the error. Valid means RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF.
//
// Header-only, so that the codec, the Lua packer and the JSON converter of
// the command-line tools (each also built alone: the fuzz targets, the e2e
// support library) share one definition.
#ifndef CORE_UTF8_H
#define CORE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// ch_utf8_seq: the length of the valid UTF-8 sequence at p[0..n), n > 0,
// or 0 when p does not start one.
static inline size_t
ch_utf8_seq(const unsigned char *p, size_t n)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t        len;
	if (c < 0x80) {
		return (1);
	} else if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
	} else if (c == 0xe0) {
		len = 3, lo = 0xa0; // no overlong forms
	} else if (c == 0xed) {
		len = 3, hi = 0x9f; // no surrogates
	} else if (c >= 0xe1 && c <= 0xef) {
		len = 3;
	} else if (c == 0xf0) {
		len = 4, lo = 0x90;
	} else if (c >= 0xf1 && c <= 0xf3) {
		len = 4;
	} else if (c == 0xf4) {
		len = 4, hi = 0x8f; // nothing above U+10FFFF
	} else {
		return (0);
	}
	if (n < len || p[1] < lo || p[1] > hi) {
		return (0);
	}
	for (size_t k = 2; k < len; k++) {
		if ((p[k] & 0xc0) != 0x80) {
			return (0);
		}
	}
	return (len);
}

// ch_utf8_ascii: buf[0..n) is all ASCII. Eight bytes at a time, the last
// word overlapping the one before; a short string takes one or two loads.
static inline bool
ch_utf8_ascii(const void *buf, size_t n)
{
	const unsigned char *p = buf;
	if (n >= 8) {
		uint64_t w, acc = 0;
		for (size_t i = 0; i + 8 <= n; i += 8) {
			memcpy(&w, p + i, 8);
			acc |= w;
		}
		memcpy(&w, p + n - 8, 8);
		return (((acc | w) & 0x8080808080808080ull) == 0);
	}
	if (n >= 4) {
		uint32_t a, b;
		memcpy(&a, p, 4);
		memcpy(&b, p + n - 4, 4);
		return (((a | b) & 0x80808080u) == 0);
	}
	unsigned acc = 0;
	for (size_t i = 0; i < n; i++) {
		acc |= p[i];
	}
	return (acc < 0x80);
}

// ch_utf8_prefix returns how many bytes at the start of buf[0..n) are
// valid UTF-8: n when all of it is.
static inline size_t
ch_utf8_prefix(const void *buf, size_t n)
{
	const unsigned char *p = buf;
	size_t               i = 0;
	if (ch_utf8_ascii(buf, n)) {
		return (n); // the usual case: keys and names
	}
	while (i < n) {
		while (n - i >= 8) {
			uint64_t w;
			memcpy(&w, p + i, 8);
			if (w & 0x8080808080808080ull) {
				break;
			}
			i += 8;
		}
		while (i < n && p[i] < 0x80) {
			i++;
		}
		if (i == n) {
			break;
		}
		size_t len = ch_utf8_seq(p + i, n - i);
		if (len == 0) {
			return (i);
		}
		i += len;
	}
	return (n);
}

static inline bool
ch_utf8_valid(const void *buf, size_t n)
{
	return (ch_utf8_prefix(buf, n) == n);
}

// ch_utf8_text: valid UTF-8 without NUL bytes — what an identifier or a
// name may hold (request fields, and the names rules put into keys).
static inline bool
ch_utf8_text(const void *buf, size_t n)
{
	return (ch_utf8_valid(buf, n) && memchr(buf, '\0', n) == NULL);
}

// ch_utf8_escape writes buf[0..n) as valid UTF-8 text into out: each byte
// that does not belong to a valid sequence becomes \xNN (four characters);
// with ctl, so do the control bytes (below 0x20, and 0x7f), for quoting
// bytes inside a message. At most cap - 1 bytes are written, then a NUL
// (nothing when cap is 0); a character or an escape that does not fit is
// left out whole. Returns the length of the whole escaped text, as
// snprintf does.
static inline size_t
ch_utf8_escape(char *out, size_t cap, const void *buf, size_t n, bool ctl)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p   = buf;
	size_t               len = 0, w = 0;
	bool                 full = cap == 0;
	for (size_t i = 0; i < n;) {
		size_t seq = ch_utf8_seq(p + i, n - i);
		bool   esc = seq == 0 ||
		    (ctl && seq == 1 && (p[i] < 0x20 || p[i] == 0x7f));
		size_t u   = esc ? 4 : seq;
		if (!full && w + u < cap) {
			if (esc) {
				out[w]     = '\\';
				out[w + 1] = 'x';
				out[w + 2] = hex[p[i] >> 4];
				out[w + 3] = hex[p[i] & 0x0f];
			} else {
				memcpy(out + w, p + i, seq);
			}
			w += u;
		} else {
			full = true;
		}
		len += u;
		i += esc ? 1 : seq;
	}
	if (cap > 0) {
		out[w] = '\0';
	}
	return (len);
}

#endif
