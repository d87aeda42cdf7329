/*
 * cblas.h — found before any real one only by the Windows test build
 * (tests/win/run.sh puts tests/win first on the include path): the enums of
 * the CBLAS interface and cblas_sgemm routed to the plain C qlwin_sgemm. The
 * native Windows build (premake5 vs2022) uses vcpkg's OpenBLAS instead.
 */
#ifndef QLWIN_CBLAS_H
#define QLWIN_CBLAS_H

#include "qlwin_sgemm.h"

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };

#define cblas_sgemm qlwin_sgemm

#endif
