int qlora_dummy;
