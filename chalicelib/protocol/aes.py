"""Zeyi's optional body encryption: AES-CBC, PKCS#7 padding, standard Base64, UTF-8.

The plaintext is appKey + timestamp + nonce + data; the wire body is the Base64 text and the sign
covers that text, so a receiver verifies before it decrypts and never decrypts unauthenticated
input. Every decryption failure is the same generic error, so nothing leaks about the padding.
"""
from __future__ import annotations

import base64
import binascii

from chalicelib.errors import BodyInvalidError, ConfigError

AES_KEY_LENGTHS = (16, 24, 32)
IV_LENGTH = 16
BLOCK_BYTES = 16


def check_key_material(key: bytes, iv: bytes, *, where: str) -> None:
    """Raises ConfigError naming ``where`` when the key or iv has the wrong length."""
    if len(key) not in AES_KEY_LENGTHS:
        raise ConfigError(f"{where}: appSecret must be 16, 24 or 32 bytes to serve as an AES key,"
                          f" got {len(key)}")
    if len(iv) != IV_LENGTH:
        raise ConfigError(f"{where}: iv must be {IV_LENGTH} bytes, got {len(iv)}")


class AesCodec:
    def __init__(self, key: bytes, iv: bytes, *, where: str = "AES"):
        check_key_material(key, iv, where=where)
        self._key = key
        self._iv = iv

    def _cipher(self):
        # pycryptodome costs ~50 ms to import; only stages with encryption on pay it.
        from Crypto.Cipher import AES

        return AES.new(self._key, AES.MODE_CBC, self._iv)

    def encrypt(self, plaintext: str) -> str:
        from Crypto.Util.Padding import pad

        data = self._cipher().encrypt(pad(plaintext.encode("utf-8"), BLOCK_BYTES))
        return base64.b64encode(data).decode("ascii")

    def decrypt(self, ciphertext_b64: str | bytes) -> str:
        """Raises BodyInvalidError for anything that is not our Base64 ciphertext of UTF-8 text."""
        from Crypto.Util.Padding import unpad

        try:
            # pycryptodome raises ValueError for no data or data that is not whole blocks.
            data = base64.b64decode(ciphertext_b64, validate=True)
            return unpad(self._cipher().decrypt(data), BLOCK_BYTES).decode("utf-8")
        except (ValueError, binascii.Error):
            raise BodyInvalidError("encrypted body could not be decrypted") from None

    def seal(self, app_key: str, timestamp: str, nonce: str, data: str) -> str:
        """Encrypt ``data`` the way Zeyi's doc prescribes, prefixed with the security headers."""
        return self.encrypt(app_key + timestamp + nonce + data)

    def open(self, app_key: str, timestamp: str, nonce: str, body: str | bytes) -> str:
        """Decrypt a sealed body and return its data.

        Raises BodyInvalidError when it cannot be decrypted or its prefix is not the headers'.
        """
        plaintext = self.decrypt(body)
        prefix = app_key + timestamp + nonce
        if not plaintext.startswith(prefix):
            raise BodyInvalidError("encrypted body does not carry this request's appKey, timestamp"
                                   " and nonce")
        return plaintext[len(prefix):]
