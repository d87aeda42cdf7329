/* repl.h — the interactive loop of the qlora host (repl.c) and what it uses of main.c. */
#ifndef QL_REPL_H
#define QL_REPL_H
#include <lua.h>
int ql_repl(lua_State *L);
int ql_host_docall(lua_State *L, int narg, int nres);   /* main.c: a protected call Ctrl-C can interrupt */
void ql_host_repl_mode(int on);   /* main.c: in the REPL, Ctrl-C never ends the process */
#endif
