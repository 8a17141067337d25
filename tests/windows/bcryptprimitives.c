/*
 * Test-only stand-in for Windows' bcryptprimitives.dll, for Wine 8.0
 * (Debian 12), which lacks ProcessPrng: Rust's standard library (1.78 and
 * later) draws its randomness from it and every Rust program exits at
 * start without it. Wine added ProcessPrng in 8.13; Windows 10 and later
 * have it. This file is built into the throw-away Wine prefix of the
 * tests (tests/src/wine.rs) and is never shipped.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom */

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
