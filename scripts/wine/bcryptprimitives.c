/*
 * Test-only stand-in for Windows' bcryptprimitives.dll, for running the
 * Windows builds under Wine 8.0, which lacks that DLL.
 *
 * Rust's standard library (1.78 and later) imports one function from it,
 * ProcessPrng, to seed HashMap keys and the like. This shim forwards it to
 * advapi32's RtlGenRandom (exported as SystemFunction036), which Wine has.
 *
 * Built by scripts/windows-smoke.sh with
 *   x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll bcryptprimitives.c -ladvapi32
 * and copied next to the .exe under test. It is never part of a release:
 * real Windows ships the genuine DLL.
 */
#include <windows.h>

/* RtlGenRandom: the documented name of advapi32!SystemFunction036. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* ProcessPrng fills `len` bytes and, per its documentation, always returns TRUE. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
