/*
 * fuzz_data.c - the DATA decoder (dot-unstuffing, the end-of-data line,
 * bare CR and LF) fed in pieces whose sizes the fuzzer picks, as TCP may
 * deliver them. The pieces must decode exactly as the whole does, each
 * call must keep to its documented output bound (out buffers are
 * allocated at that size so ASan sees any write past it), and in
 * normalizing mode no bare CR or LF may come out.
 *
 * Input: byte 0 bit 0 normalize; byte 1 the number (0-7) of piece sizes
 * that follow; then the piece sizes (cycled, 0 meaning 1); then the stream.
 * There is no decoder for BDAT: its chunks are copied as they are.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "smtp_proto.h"

struct result {
	char		*out;
	size_t		 len;
	size_t		 consumed;
	int		 end;
	uint64_t	 bare;
};

static void
decode(const uint8_t *in, size_t len, int normalize, const uint8_t *steps,
    size_t nsteps, struct result *r)
{
	struct data_dec	 d;
	size_t		 off = 0, n, used, outlen, k = 0;
	char		*tmp;
	int		 end = 0;

	r->out = malloc(DATA_DEC_OUTMAX(len));
	if (r->out == NULL)
		abort();
	r->len = 0;
	data_dec_init(&d, normalize);
	while (off < len && !end) {
		n = len - off;
		if (nsteps > 0 && steps[k % nsteps] != 0 &&
		    steps[k % nsteps] < n)
			n = steps[k % nsteps];
		else if (nsteps > 0 && steps[k % nsteps] == 0)
			n = 1;
		k++;
		/* Exactly what data_dec_run's contract asks for. */
		if ((tmp = malloc(DATA_DEC_OUTMAX(n))) == NULL)
			abort();
		used = data_dec_run(&d, (const char *)in + off, n, tmp,
		    &outlen, &end);
		FUZZ_CHECK(used <= n && (used == n || end));
		FUZZ_CHECK(outlen <= DATA_DEC_OUTMAX(n));
		FUZZ_CHECK(r->len + outlen <= DATA_DEC_OUTMAX(len));
		memcpy(r->out + r->len, tmp, outlen);
		r->len += outlen;
		free(tmp);
		off += used;
	}
	r->consumed = off;
	r->end = end;
	r->bare = d.bare;
}

void
fuzz_data_init(void)
{
}

int
fuzz_data_one(const uint8_t *data, size_t size)
{
	struct result	 whole, pieces;
	const uint8_t	*steps;
	size_t		 nsteps, i;
	int		 normalize;

	if (size < 2)
		return 0;
	normalize = data[0] & 1;
	nsteps = data[1] % 8;
	if (size < 2 + nsteps)
		return 0;
	steps = data + 2;
	data += 2 + nsteps;
	size -= 2 + nsteps;
	if (size == 0)
		return 0;

	decode(data, size, normalize, NULL, 0, &whole);
	decode(data, size, normalize, steps, nsteps, &pieces);
	FUZZ_CHECK(whole.end == pieces.end);
	FUZZ_CHECK(whole.consumed == pieces.consumed);
	FUZZ_CHECK(whole.bare == pieces.bare);
	FUZZ_CHECK(whole.len == pieces.len);
	FUZZ_CHECK(memcmp(whole.out, pieces.out, whole.len) == 0);
	/* The end is CRLF "." CRLF (or the stream's first "." CRLF). */
	if (whole.end) {
		FUZZ_CHECK(whole.consumed >= 3);
		FUZZ_CHECK(memcmp(data + whole.consumed - 3, ".\r\n", 3) == 0);
		FUZZ_CHECK(whole.consumed == 3 ||
		    (whole.consumed >= 5 &&
		    memcmp(data + whole.consumed - 5, "\r\n", 2) == 0));
	}
	if (normalize)
		for (i = 0; i < whole.len; i++) {
			if (whole.out[i] == '\n')
				FUZZ_CHECK(i > 0 && whole.out[i - 1] == '\r');
			if (whole.out[i] == '\r' && i + 1 < whole.len)
				FUZZ_CHECK(whole.out[i + 1] == '\n');
		}
	else if (whole.bare == 0)
		/* Nothing bare: the output is the input less stuffing. */
		FUZZ_CHECK(whole.len <= whole.consumed);
	free(whole.out);
	free(pieces.out);
	return 0;
}

FUZZ_ENTRY(data)
