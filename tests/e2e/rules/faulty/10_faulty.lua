on("boom", function(c, e)
  c.attrs.touched = true
  error("the rule failed on purpose")
end)
on("fine", function(c, e) c.attrs.fine = true end)
