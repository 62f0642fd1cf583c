/*
 * fuzz.h - the libFuzzer targets, each also callable without libFuzzer.
 *
 * Every tests/fuzz/fuzz_NAME.c defines fuzz_NAME_init() (once, before any
 * input) and fuzz_NAME_one() (one input), and, unless FUZZ_NO_ENTRY is
 * defined, libFuzzer's two entry points calling them. The libFuzzer build
 * links one target per program; tests/unit/test_fuzz_regress.c links them
 * all with FUZZ_NO_ENTRY and replays the committed inputs in the normal
 * test suite. A target aborts when an invariant it checks fails.
 */
#ifndef RELAYD_FUZZ_H
#define RELAYD_FUZZ_H

#include <stddef.h>
#include <stdint.h>

void	fuzz_smtp_proto_init(void);
int	fuzz_smtp_proto_one(const uint8_t *, size_t);
void	fuzz_data_init(void);
int	fuzz_data_one(const uint8_t *, size_t);
void	fuzz_graph_map_init(void);
int	fuzz_graph_map_one(const uint8_t *, size_t);
void	fuzz_config_init(void);
int	fuzz_config_one(const uint8_t *, size_t);
void	fuzz_proxy_init(void);
int	fuzz_proxy_one(const uint8_t *, size_t);
void	fuzz_token_init(void);
int	fuzz_token_one(const uint8_t *, size_t);
void	fuzz_spool_record_init(void);
int	fuzz_spool_record_one(const uint8_t *, size_t);

/* libFuzzer's entry points. */
int	LLVMFuzzerInitialize(int *, char ***);
int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#ifdef FUZZ_NO_ENTRY
#define FUZZ_ENTRY(name)
#else
#define FUZZ_ENTRY(name)						\
int									\
LLVMFuzzerInitialize(int *argc, char ***argv)				\
{									\
	(void)argc;							\
	(void)argv;							\
	fuzz_##name##_init();						\
	return 0;							\
}									\
int									\
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)		\
{									\
	return fuzz_##name##_one(data, size);				\
}
#endif

/* Aborts (a finding) when a target's own check fails. */
#define FUZZ_CHECK(cond)	do {					\
	if (!(cond))							\
		fuzz_fail(__FILE__, __LINE__, #cond);			\
} while (0)
void	fuzz_fail(const char *, int, const char *) __attribute__((noreturn));

/* A NUL-terminated malloc'd copy of the input (the parsers want strings). */
char	*fuzz_strdup(const uint8_t *, size_t);

#endif
