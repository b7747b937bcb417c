/*
 * Test-harness shim, for running the agent's .exe under Debian bookworm's wine 8.0 only.
 *
 * Rust's standard library (1.78+) gets random bytes from ProcessPrng in
 * bcryptprimitives.dll, which every supported Windows (10, Server 2016 and later) ships but
 * wine 8.0 does not. This DLL exports ProcessPrng on top of RtlGenRandom (advapi32
 * SystemFunction036). CI builds it and puts it next to the .exe before running it under
 * wine (see agent/ci/wine-smoke.sh). It is never shipped with the agent.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
