// CRC32C (Castagnoli): the snapshot file's page checksums (format version 2). One call sums a
// whole run of pages, so that a restore pays one N-API call per read, not one per page; x86's
// SSE4.2 crc32 instruction where the CPU has it (three pages at once: the instruction's latency
// is three times its throughput), a table otherwise, the same values either way.
//   crc32c(bytes, seed, software?) -> uint32, as zlib's crc32(bytes, seed) is for CRC-32
//   checksumPages(bytes, pageSize, firstIndex) -> sum mod 2^32 of crc32c(page i, firstIndex + i)
#include <napi.h>

#include <array>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "args.h"
#include "errors.h"

namespace postcopy {

namespace {

constexpr uint32_t kPolynomial = 0x82f63b78;  // Castagnoli, reflected

// Slicing by 8: table[k][b] is the CRC of byte b followed by k zero bytes.
const std::array<std::array<uint32_t, 256>, 8>& Tables() {
  static const auto tables = [] {
    std::array<std::array<uint32_t, 256>, 8> t{};
    for (uint32_t b = 0; b < 256; b++) {
      uint32_t c = b;
      for (int k = 0; k < 8; k++) c = (c >> 1) ^ (kPolynomial & (0u - (c & 1)));
      t[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++)
      for (int k = 1; k < 8; k++) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
    return t;
  }();
  return tables;
}

// Raw update (no pre/post inversion).
uint32_t UpdateSoftware(uint32_t crc, const uint8_t* p, size_t n) {
  const auto& t = Tables();
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    word ^= crc;
    crc = t[7][word & 0xff] ^ t[6][(word >> 8) & 0xff] ^ t[5][(word >> 16) & 0xff] ^ t[4][(word >> 24) & 0xff] ^
          t[3][(word >> 32) & 0xff] ^ t[2][(word >> 40) & 0xff] ^ t[1][(word >> 48) & 0xff] ^ t[0][word >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t UpdateHardware(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  while (n--) c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
  return static_cast<uint32_t>(c);
}

// Three pages of `size` bytes (a multiple of 8) at once, each from its own seed.
__attribute__((target("sse4.2"))) void UpdateHardware3(uint32_t* crcs, const uint8_t* a, const uint8_t* b, const uint8_t* c, size_t size) {
  uint64_t x = crcs[0], y = crcs[1], z = crcs[2];
  for (size_t at = 0; at < size; at += 8) {
    uint64_t u, v, w;
    std::memcpy(&u, a + at, 8);
    std::memcpy(&v, b + at, 8);
    std::memcpy(&w, c + at, 8);
    x = _mm_crc32_u64(x, u);
    y = _mm_crc32_u64(y, v);
    z = _mm_crc32_u64(z, w);
  }
  crcs[0] = static_cast<uint32_t>(x);
  crcs[1] = static_cast<uint32_t>(y);
  crcs[2] = static_cast<uint32_t>(z);
}

bool HasHardware() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#else
bool HasHardware() { return false; }
uint32_t UpdateHardware(uint32_t crc, const uint8_t* p, size_t n) { return UpdateSoftware(crc, p, n); }
#endif

uint32_t Crc32c(uint32_t seed, const uint8_t* p, size_t n, bool software) {
  uint32_t crc = ~seed;
  crc = software || !HasHardware() ? UpdateSoftware(crc, p, n) : UpdateHardware(crc, p, n);
  return ~crc;
}

uint32_t SumPages(const uint8_t* p, size_t pages, size_t pageSize, uint32_t firstIndex) {
  uint32_t sum = 0;
  size_t i = 0;
#if defined(__x86_64__)
  if (HasHardware() && pageSize % 8 == 0) {
    for (; i + 3 <= pages; i += 3) {
      uint32_t crcs[3] = {~(firstIndex + static_cast<uint32_t>(i)), ~(firstIndex + static_cast<uint32_t>(i) + 1), ~(firstIndex + static_cast<uint32_t>(i) + 2)};
      UpdateHardware3(crcs, p + i * pageSize, p + (i + 1) * pageSize, p + (i + 2) * pageSize, pageSize);
      sum += ~crcs[0] + ~crcs[1] + ~crcs[2];
    }
  }
#endif
  for (; i < pages; i++) sum += Crc32c(firstIndex + static_cast<uint32_t>(i), p + i * pageSize, pageSize, false);
  return sum;
}

uint32_t ToUint32(const Napi::Value& v, const char* name) {
  size_t n = ToSize(v, name);
  if (n > UINT32_MAX) ThrowOutOfRange(v, name, ">= 0 && <= 4294967295");
  return static_cast<uint32_t>(n);
}

Napi::Uint8Array ToBytes(const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) ThrowArgType(v, name, "an instance of Uint8Array");
  return v.As<Napi::Uint8Array>();
}

Napi::Value Crc32cFunction(const Napi::CallbackInfo& info) {
  auto bytes = ToBytes(info[0], "bytes");
  uint32_t seed = info[1].IsUndefined() ? 0 : ToUint32(info[1], "seed");
  bool software = info[2].ToBoolean();
  return Napi::Number::New(info.Env(), Crc32c(seed, bytes.Data(), bytes.ByteLength(), software));
}

Napi::Value ChecksumPages(const Napi::CallbackInfo& info) {
  auto bytes = ToBytes(info[0], "bytes");
  size_t pageSize = ToSize(info[1], "pageSize");
  uint32_t firstIndex = ToUint32(info[2], "firstIndex");
  if (pageSize == 0) ThrowOutOfRange(info[1], "pageSize", "> 0");
  if (bytes.ByteLength() % pageSize != 0)
    ThrowOutOfRange(Napi::Number::New(info.Env(), static_cast<double>(bytes.ByteLength())), "bytes.length", "a multiple of pageSize (" + std::to_string(pageSize) + ")");
  return Napi::Number::New(info.Env(), SumPages(bytes.Data(), bytes.ByteLength() / pageSize, pageSize, firstIndex));
}

}  // namespace

void DefineChecksum(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32c", Napi::Function::New<Crc32cFunction>(env, "crc32c"));
  exports.Set("checksumPages", Napi::Function::New<ChecksumPages>(env, "checksumPages"));
  exports.Set("crc32cHardware", Napi::Boolean::New(env, HasHardware()));
}

}  // namespace postcopy
