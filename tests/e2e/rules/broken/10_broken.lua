on("x", function(c)
  c:count("x"
end)
