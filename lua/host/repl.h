/* repl.h — the interactive loop of the qlora host (repl.c). */
#ifndef QL_REPL_H
#define QL_REPL_H
#include <lua.h>
int ql_repl(lua_State *L);
int ql_host_docall(lua_State *L, int narg, int nres);   /* main.c */
#endif
