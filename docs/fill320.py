# Fill 320 chunks of 1 MiB with a pattern and print a CRC-32 over them (the program the
# README's chart and tests/pressure_programs.rs run on a 160 MiB machine).
import zlib
pat = bytes(range(256)) * 16
chunks = [bytearray(pat) * 256 for _ in range(320)]
crc = 0
for c in chunks:
    crc = zlib.crc32(c, crc)
print(len(chunks), sum(map(len, chunks)), crc)
