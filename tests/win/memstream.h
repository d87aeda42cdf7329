/*
 * memstream.h — open_memstream for the Windows test build. POSIX's
 * open_memstream (used by the safetensors writer and the chat-template code)
 * has no Windows counterpart; tests/win/run.sh force-includes this header
 * (-include) into the engine files that call it. The stream is a temporary
 * file deleted on close, and fclose is routed through qlwin_fclose, which
 * reads it back into *buf and *len first. It covers those callers' use:
 * write, then fclose, then read the buffer (not fflush's update of *buf).
 * A native port should move the two callers to ql_strbuf instead.
 */
#ifndef QLWIN_MEMSTREAM_H
#define QLWIN_MEMSTREAM_H
#ifdef _WIN32

#include <stdio.h>

FILE *qlwin_open_memstream(char **buf, size_t *len);
int qlwin_fclose(FILE *fp);

#define open_memstream qlwin_open_memstream
#define fclose qlwin_fclose

#endif
#endif
