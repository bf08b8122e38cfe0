"""Error types. Every message is one line that names the bad thing and says what would be right."""


class SdwebError(Exception):
    """Base of every error sdweb raises on purpose; the CLI prints `error: <message>` and exits 2."""


class SafetensorsError(SdwebError):
    """A .safetensors file is malformed (message names the file and, where known, the tensor)."""


class WeightError(SdwebError):
    """A checkpoint disagrees with its config: a missing, unused or wrongly shaped tensor."""


class ModelError(SdwebError):
    """A model folder is missing, incomplete, or not a diffusers Stable Diffusion layout."""


class ConfigError(SdwebError):
    """A user-supplied setting is out of range (size, steps, guidance, scheduler ...). `field` names
    the setting (settings.FIELDS: "steps", "width", "model" ...) so the page can point at its input;
    None when the error is not about one setting."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Cancelled(SdwebError):
    """A generation was cancelled through the progress callback."""


class TorchFileError(SdwebError):
    """A PyTorch .pt/.bin file is malformed or holds more than tensors and plain containers (the
    message names the file and the refused or bad part)."""


class EmbeddingError(SdwebError):
    """A textual-inversion file has an unknown layout, the wrong width or non-finite values."""


class LoraError(SdwebError):
    """A LoRA file has an unknown key, a key that matches no module of the model, shapes that do not
    fit it, or non-finite values (the message names the file and the first bad key)."""
