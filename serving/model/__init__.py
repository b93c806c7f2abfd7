"""The served model: its features and generated request models, the limits hostile input
meets, one loaded version (`served`), and the store that loads and swaps versions."""
