/*
 * shm/crc32c.h — CRC32C (Castagnoli), the checksum of the file tiers'
 * payloads and of the remote tier's chunks. A mechanism with no cache
 * meaning: it lives in shm/ so that every layer above (core/, remote/)
 * can use it. Not the hashing of keys (core/entry/key.c, XXH3).
 */
#ifndef KVSHM_SHM_CRC32C_H
#define KVSHM_SHM_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* CRC32C of buf, continuing crc (0 to start): crc(a ‖ b) ==
 * kvshm__crc32c(kvshm__crc32c(0, a), b). The SSE4.2 instruction on three
 * interleaved streams where the CPU has it (checked at run time), else a
 * slicing-by-8 table. */
uint32_t kvshm__crc32c(uint32_t crc, const void *buf, size_t len);
/* The table version alone (tests compare the two). */
uint32_t kvshm__crc32c_sw(uint32_t crc, const void *buf, size_t len);
bool kvshm__crc32c_hw_available(void);
/* CRC32C of A ‖ B from CRC32C(A), CRC32C(B) and |B| (zlib's method: B's
 * length in zero bytes shifted through A's CRC by GF(2) matrices). */
uint32_t kvshm__crc32c_combine(uint32_t a, uint32_t b, uint64_t blen);

#endif
