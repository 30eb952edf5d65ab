"""Everything outside the process: the one outbound HTTP client and its address policy, token providers, mail,
bot drivers, the identity provider and the debug-audio files. Each outside system sits behind one module."""
